//! Envoy's stream idle timeout (the connection manager's `stream_idle_timeout`, ProxyConfig
//! `connectionSettings.httpStreamIdleTimeout`): one timer per request, pushed back by any
//! activity on the stream (its headers, request body data read, the response headers,
//! response body data sent). When it fires before the response started the request is
//! answered 408 (`SI`, `stream_idle_timeout`); after, the stream is reset.
//!
//! Activity is one atomic store of the time since the request began; the timer reads it
//! when it fires and sleeps again until the new deadline, so frames never touch the timer
//! itself. Nothing of this exists for a request when no timeout is configured.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// The idle clock of one request.
#[derive(Debug)]
pub struct StreamIdle {
    start: Instant,
    timeout: Duration,
    /// The last activity, in microseconds since `start`.
    last_us: AtomicU64,
}

impl StreamIdle {
    /// A request whose headers just arrived, idle after `timeout` without activity.
    pub fn start(timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            timeout,
            last_us: AtomicU64::new(0),
        })
    }

    /// Records activity now.
    pub fn touch(&self) {
        let us = self.start.elapsed().as_micros() as u64;
        self.last_us.fetch_max(us, Ordering::Relaxed);
    }

    fn deadline(&self) -> Instant {
        self.start + Duration::from_micros(self.last_us.load(Ordering::Relaxed)) + self.timeout
    }

    /// Resolves once the stream has been idle for the timeout.
    pub async fn expired(&self) {
        loop {
            let deadline = self.deadline();
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }

    /// The timer the response body polls between frames.
    pub fn watch(self: &Arc<Self>) -> IdleWatch {
        IdleWatch {
            sleep: Box::pin(tokio::time::sleep_until(self.deadline())),
            idle: self.clone(),
        }
    }
}

/// A response body's view of the idle clock.
pub struct IdleWatch {
    idle: Arc<StreamIdle>,
    sleep: Pin<Box<Sleep>>,
}

impl IdleWatch {
    /// Records activity (a frame went out).
    pub fn touch(&self) {
        self.idle.touch();
    }

    /// Ready once the stream has been idle for the timeout; registers `cx` otherwise.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let deadline = self.idle.deadline();
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
            if self.sleep.deadline() != deadline {
                self.sleep.as_mut().reset(deadline);
            }
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn activity_pushes_the_deadline_back() {
        let idle = StreamIdle::start(Duration::from_secs(1));
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_millis(600)).await;
        idle.touch();
        idle.expired().await;
        assert_eq!(t0.elapsed(), Duration::from_millis(1600));
        let mut watch = idle.watch();
        let t1 = Instant::now();
        std::future::poll_fn(|cx| watch.poll_expired(cx)).await;
        assert_eq!(t1.elapsed(), Duration::ZERO, "already idle");
        idle.touch();
        let t2 = Instant::now();
        std::future::poll_fn(|cx| watch.poll_expired(cx)).await;
        assert_eq!(t2.elapsed(), Duration::from_secs(1));
    }
}
