//! How long an HTTP connection inside a tunnel has gone without a request.
//!
//! `--request-header-timeout` bounds the time to read a request's headers, idle keep-alive
//! included: otherwise a client could hold a tunnel open by sending its headers a byte at a
//! time (or, on HTTP/2, never finishing a HEADERS block) or by sending nothing at all.
//! hyper's HTTP/2 server has no such bound, and its HTTP/1.1 one allocates and registers a
//! timer for every request; both servers use this one instead. [`Activity`] counts the requests of one connection in
//! flight and [`Activity::idle_for`] resolves once none has been in flight, and none has
//! started, for the timeout; the connection is then shut down gracefully. A request in flight,
//! however long, keeps the connection open, and GOAWAY lets streams already started finish.
//! The connection manager's `common_http_protocol_options.idle_timeout` uses the same count
//! on HTTP/1.1 and HTTP/2 connections alike (Envoy's: no request in flight for that long).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// Requests in flight on one connection, and when the last one ended.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    in_flight: AtomicU32,
    /// When the connection last became idle, in microseconds since `start`.
    idle_since_us: AtomicU64,
}

impl Activity {
    /// A connection that starts idle now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            in_flight: AtomicU32::new(0),
            idle_since_us: AtomicU64::new(0),
        })
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// Resolves once the connection has had no request in flight for `timeout`.
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            let deadline = if self.in_flight.load(Ordering::Acquire) == 0 {
                let since = Duration::from_micros(self.idle_since_us.load(Ordering::Acquire));
                let deadline = self.start + since + timeout;
                // Read again: a request that began meanwhile keeps the connection busy.
                if Instant::now() >= deadline && self.in_flight.load(Ordering::Acquire) == 0 {
                    return;
                }
                deadline
            } else {
                Instant::now() + timeout
            };
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// One request in flight on an [`Activity`]'s connection.
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.0;
        let now = a.start.elapsed().as_micros() as u64;
        a.idle_since_us.fetch_max(now, Ordering::AcqRel);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_requests_is_idle_after_the_timeout() {
        let a = Activity::new();
        let t0 = Instant::now();
        a.idle_for(Duration::from_secs(5)).await;
        assert_eq!(t0.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_keeps_it_busy_and_its_end_restarts_the_clock() {
        let a = Activity::new();
        let busy = a.begin();
        let t0 = Instant::now();
        let ended = {
            let a = a.clone();
            tokio::spawn(async move {
                a.idle_for(Duration::from_secs(5)).await;
                Instant::now()
            })
        };
        tokio::time::sleep(Duration::from_secs(12)).await;
        drop(busy);
        let idle_at = ended.await.unwrap();
        assert_eq!(idle_at - t0, Duration::from_secs(17));
    }
}
