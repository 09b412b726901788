//! [`OnWake`]: a future polled only when it has asked to be.
//!
//! A connection's task waits on its I/O and, beside it, on signals that seldom fire
//! (shutdown, a listener drain, timers such as the idle bound or the keepalive ping). In a
//! `select!` every branch is polled each time the task wakes, so each request paid for
//! polling all of those signals again (watch receivers, timer registrations: about 3,000
//! instructions per request in a callgrind profile of the benchmark's 1 KiB requests).
//! Wrapped in [`OnWake`], the signals are polled once, then again only after their own
//! waker fired.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::task::{waker_ref, ArcWake, AtomicWaker};

pin_project_lite::pin_project! {
    /// Polls `inner` on the first poll and afterwards only when a waker it registered was
    /// woken; other wakes of the task leave it alone.
    pub struct OnWake<F> {
        #[pin]
        inner: F,
        flag: Arc<Flag>,
    }
}

/// Whether the inner future was woken, and the task to wake.
#[derive(Default)]
pub struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl ArcWake for Flag {
    fn wake_by_ref(this: &Arc<Self>) {
        this.woken.store(true, Ordering::Release);
        this.task.wake();
    }
}

impl<F: Future> OnWake<F> {
    /// Wraps `inner` (one allocation, for the shared flag).
    pub fn new(inner: F) -> Self {
        let flag = Arc::new(Flag::default());
        flag.woken.store(true, Ordering::Relaxed);
        Self { inner, flag }
    }
}

impl<F: Future> Future for OnWake<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        this.flag.task.register(cx.waker());
        if !this.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = waker_ref(this.flag);
        this.inner.poll(&mut Context::from_waker(&waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; ready once `open` is set (and woken through the waker it kept).
    struct Probe {
        polls: Arc<AtomicUsize>,
        open: Arc<AtomicBool>,
        waker: Arc<std::sync::Mutex<Option<std::task::Waker>>>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            if self.open.load(Ordering::Relaxed) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[test]
    fn the_inner_future_is_polled_only_after_its_own_wake() {
        let polls = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicBool::new(false));
        let waker = Arc::new(std::sync::Mutex::new(None));
        let mut gated = Box::pin(OnWake::new(Probe {
            polls: polls.clone(),
            open: open.clone(),
            waker: waker.clone(),
        }));
        let task = futures::task::noop_waker();
        let mut cx = Context::from_waker(&task);
        assert!(gated.as_mut().poll(&mut cx).is_pending());
        // The task wakes for other reasons: the probe is left alone.
        for _ in 0..5 {
            assert!(gated.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1);
        // Its own waker fires: polled again, and ready.
        open.store(true, Ordering::Relaxed);
        waker.lock().unwrap().take().unwrap().wake();
        assert!(gated.as_mut().poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }
}
