//! One bound on the request bytes the proxy holds in memory for every request together:
//! bodies kept for retries ([`crate::retry::replay`]) and bodies buffered for an ext_authz
//! check ([`crate::authz::ext::body`]). Each request's own limit still applies; this one
//! stops many requests at their limits from adding up (256 MiB by default,
//! `--body-buffer-limit-mib`). What happens past it is the user's choice, never a queue: a
//! retry body is not kept (so not retried), an ext_authz check that needs the body is
//! answered 503 at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// What all requests may hold together by default.
pub const DEFAULT_GLOBAL_LIMIT: usize = 256 * 1024 * 1024;

/// Bytes held by every request together, and the most allowed.
#[derive(Debug)]
pub struct Budget {
    limit: AtomicUsize,
    used: AtomicUsize,
    /// Requests that could not hold their bytes because the budget was spent.
    pub overflows: AtomicUsize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            limit: AtomicUsize::new(limit),
            used: AtomicUsize::new(0),
            overflows: AtomicUsize::new(0),
        }
    }

    /// The process's budget ([`DEFAULT_GLOBAL_LIMIT`] unless [`Budget::set_limit`] changed it).
    pub fn global() -> Arc<Budget> {
        static GLOBAL: OnceLock<Arc<Budget>> = OnceLock::new();
        GLOBAL
            .get_or_init(|| Arc::new(Budget::new(DEFAULT_GLOBAL_LIMIT)))
            .clone()
    }

    /// Changes the limit (the command line's `--body-buffer-limit-mib`).
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `n` bytes if they fit; a refusal counts as an overflow.
    pub fn reserve(&self, n: usize) -> bool {
        let before = self.used.fetch_add(n, Ordering::Relaxed);
        if before + n > self.limit.load(Ordering::Relaxed) {
            self.used.fetch_sub(n, Ordering::Relaxed);
            self.overflows.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Gives back `n` bytes taken with [`Budget::reserve`].
    pub fn release(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }

    /// An empty hold on this budget, grown as bytes are buffered and given back on drop.
    pub fn hold(self: &Arc<Self>) -> Held {
        Held {
            budget: self.clone(),
            bytes: 0,
        }
    }
}

/// Bytes one request holds from a [`Budget`], released when this is dropped.
#[derive(Debug)]
pub struct Held {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Held {
    /// Holds `n` more bytes; false (holding nothing more) when the budget is spent.
    pub fn grow(&mut self, n: usize) -> bool {
        if !self.budget.reserve(n) {
            return false;
        }
        self.bytes += n;
        true
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_grow_within_the_limit_and_give_back_on_drop() {
        let budget = Arc::new(Budget::new(10));
        let mut a = budget.hold();
        assert!(a.grow(6));
        let mut b = budget.hold();
        assert!(!b.grow(5), "6 + 5 is over 10");
        assert_eq!(budget.overflows.load(Ordering::Relaxed), 1);
        assert!(b.grow(4));
        assert_eq!(budget.used(), 10);
        drop(a);
        assert_eq!(budget.used(), 4);
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}
