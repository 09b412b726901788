//! Limits on retries in flight to a Service port: the cluster circuit breaker's
//! `max_retries` (DestinationRule `connectionPool.http.maxRetries`) or its `retry_budget`
//! (DestinationRule `retryBudget`: a share of the requests in flight, never below a minimum
//! concurrency). A retry past the limit is not sent: the last attempt's answer stands, as
//! Envoy's `upstream_rq_retry_overflow`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::model::Service;
use crate::route::Backend;

/// How many retries may be in flight to a port at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RetryLimit {
    /// At most this many.
    Max(usize),
    /// `percent` of the requests in flight, at least `min_concurrency`.
    Budget {
        /// Share of the active requests, in percent.
        percent: f64,
        /// The floor.
        min_concurrency: usize,
    },
}

impl RetryLimit {
    /// Retries allowed in flight while `active` requests are.
    pub fn allowed(&self, active: usize) -> usize {
        match *self {
            RetryLimit::Max(n) => n,
            RetryLimit::Budget {
                percent,
                min_concurrency,
            } => ((active as f64 * percent / 100.0) as usize).max(min_concurrency),
        }
    }
}

/// A retry counted in flight to its port; the count drops with it.
#[derive(Debug)]
pub struct RetryGuard {
    service: Arc<Service>,
    port: u16,
}

impl Drop for RetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.service.port(self.port) {
            p.retries().fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Asks to retry to `backend`: `Ok(None)` when its port has no limit, `Ok(Some(guard))`
/// when the retry fits (counted until the guard drops), `Err(())` when it would overflow.
#[allow(clippy::result_unit_err)]
pub fn start(backend: &Backend) -> Result<Option<RetryGuard>, ()> {
    let Backend::Service { service, port } = backend else {
        return Ok(None);
    };
    let Some(sp) = service.port(*port) else {
        return Ok(None);
    };
    let Some(limit) = sp.retry_limit() else {
        return Ok(None);
    };
    let allowed = limit.allowed(sp.requests().load(Ordering::Relaxed));
    if sp.retries().fetch_add(1, Ordering::Relaxed) >= allowed {
        sp.retries().fetch_sub(1, Ordering::Relaxed);
        return Err(());
    }
    Ok(Some(RetryGuard {
        service: service.clone(),
        port: *port,
    }))
}

#[cfg(test)]
mod tests {
    use super::RetryLimit;

    #[test]
    fn a_budget_is_a_share_of_active_requests_with_a_floor() {
        let b = RetryLimit::Budget {
            percent: 20.0,
            min_concurrency: 3,
        };
        assert_eq!(b.allowed(0), 3);
        assert_eq!(b.allowed(100), 20);
        assert_eq!(RetryLimit::Max(1).allowed(100), 1);
    }
}
