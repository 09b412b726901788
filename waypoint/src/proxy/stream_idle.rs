//! Envoy's per-stream timers of the connection manager: the stream idle timeout
//! (`stream_idle_timeout`, ProxyConfig `connectionSettings.httpStreamIdleTimeout`), pushed
//! back by any activity on the stream (its headers, request body data read, the response
//! headers, response body data sent), and the stream's maximum duration
//! (`common_http_protocol_options.max_stream_duration`, ProxyConfig
//! `connectionSettings.httpMaxStreamDuration`), counted from its headers whatever happens.
//! When one fires before the response started the request is answered 408 (idle: `SI`,
//! `stream_idle_timeout`; duration: `max_duration_timeout`); after, the stream is reset.
//!
//! Activity is one atomic store of the time since the request began; the timer reads it
//! when it fires and sleeps again until the new deadline, so frames never touch the timer
//! itself. Nothing of this exists for a request when neither is configured.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Which of a stream's timers ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// No activity for the stream idle timeout.
    Idle,
    /// The stream's maximum duration is up.
    MaxDuration,
}

/// The timers of one request.
#[derive(Debug)]
pub struct StreamIdle {
    start: Instant,
    /// The idle timeout, if any.
    timeout: Option<Duration>,
    /// The maximum duration, if any.
    max: Option<Duration>,
    /// The last activity, in microseconds since `start`.
    last_us: AtomicU64,
}

impl StreamIdle {
    /// A request whose headers just arrived, idle after `timeout` without activity and
    /// over after `max`; `None` when neither is set.
    pub fn start(timeout: Option<Duration>, max: Option<Duration>) -> Option<Arc<Self>> {
        (timeout.is_some() || max.is_some()).then(|| {
            Arc::new(Self {
                start: Instant::now(),
                timeout,
                max,
                last_us: AtomicU64::new(0),
            })
        })
    }

    /// Records activity now.
    pub fn touch(&self) {
        if self.timeout.is_some() {
            let us = self.start.elapsed().as_micros() as u64;
            self.last_us.fetch_max(us, Ordering::Relaxed);
        }
    }

    /// The first deadline and the timer it belongs to.
    fn deadline(&self) -> (Instant, Expiry) {
        let idle = self
            .timeout
            .map(|t| self.start + Duration::from_micros(self.last_us.load(Ordering::Relaxed)) + t);
        let max = self.max.map(|m| self.start + m);
        match (idle, max) {
            (Some(i), Some(m)) if m <= i => (m, Expiry::MaxDuration),
            (Some(i), _) => (i, Expiry::Idle),
            (None, Some(m)) => (m, Expiry::MaxDuration),
            // `start` makes none without a timer; a far deadline, never reached.
            (None, None) => (self.start + Duration::from_secs(86_400 * 365), Expiry::Idle),
        }
    }

    /// Resolves once a timer has run out, with which.
    pub async fn expired(&self) -> Expiry {
        loop {
            let (deadline, which) = self.deadline();
            if Instant::now() >= deadline {
                return which;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }

    /// The timer the response body polls between frames.
    pub fn watch(self: &Arc<Self>) -> IdleWatch {
        IdleWatch {
            sleep: Box::pin(tokio::time::sleep_until(self.deadline().0)),
            idle: self.clone(),
        }
    }
}

/// A response body's view of the stream's timers.
pub struct IdleWatch {
    idle: Arc<StreamIdle>,
    sleep: Pin<Box<Sleep>>,
}

impl IdleWatch {
    /// Records activity (a frame went out).
    pub fn touch(&self) {
        self.idle.touch();
    }

    /// Ready, with which, once a timer has run out; registers `cx` otherwise.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<Expiry> {
        loop {
            let (deadline, which) = self.idle.deadline();
            if Instant::now() >= deadline {
                return Poll::Ready(which);
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
        let idle = StreamIdle::start(Some(Duration::from_secs(1)), None).unwrap();
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_millis(600)).await;
        idle.touch();
        assert_eq!(idle.expired().await, Expiry::Idle);
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

    #[tokio::test(start_paused = true)]
    async fn the_maximum_duration_is_not_pushed_back() {
        assert!(StreamIdle::start(None, None).is_none());
        let both = StreamIdle::start(
            Some(Duration::from_secs(1)),
            Some(Duration::from_millis(2500)),
        )
        .unwrap();
        let t0 = Instant::now();
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(800)).await;
            both.touch();
        }
        // Touched every 800 ms: never idle; the duration ends it at 2.5 s regardless.
        assert_eq!(both.expired().await, Expiry::MaxDuration);
        assert_eq!(t0.elapsed(), Duration::from_millis(3200));
        let mut watch = both.watch();
        assert_eq!(
            std::future::poll_fn(|cx| watch.poll_expired(cx)).await,
            Expiry::MaxDuration
        );
        let only = StreamIdle::start(None, Some(Duration::from_secs(2))).unwrap();
        let t1 = Instant::now();
        only.touch();
        assert_eq!(only.expired().await, Expiry::MaxDuration);
        assert_eq!(t1.elapsed(), Duration::from_secs(2));
    }
}
