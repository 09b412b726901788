//! Timeouts and retries of the matched rule (`timeouts.request`, `timeouts.backendRequest`,
//! `retry`), applied around the upstream call.
//!
//! A retry needs the request again: requests without a body are copied; a body streams
//! through a [`replay::Replayable`] source that remembers up to 1 MiB of it (Envoy's
//! default buffer limit), so a retry sends the same body; past the limit, no retry.
//! Connection failures and resets are retried, and so are the rule's listed response
//! codes.

mod layer;
pub mod limit;
pub mod replay;

pub use layer::{RetryFuture, RetryLayer, RetryService};

use std::time::Duration;

use crate::route::model::RetryPolicy;
use crate::ProxyError;

/// Whether an attempt's outcome should be retried under `policy`.
pub fn should_retry(policy: &RetryPolicy, outcome: &Result<u16, &ProxyError>) -> bool {
    match outcome {
        Ok(status) => policy.codes.contains(status),
        Err(e) => e.is_connect_failure() || matches!(e, ProxyError::UpstreamReset { .. }),
    }
}

/// The longest wait before retry number `n` (1-based): Envoy's fully jittered exponential
/// backoff draws uniformly from `[0, (2^n - 1) * base]`, capped at ten times the base.
pub fn backoff_ceiling(policy: &RetryPolicy, n: u32) -> Duration {
    let base = policy.backoff;
    let factor = (1u32 << n.min(16)).saturating_sub(1);
    (base * factor).min(base * 10)
}

/// The wait before retry number `n`: a uniform draw below [`backoff_ceiling`].
pub fn backoff(policy: &RetryPolicy, n: u32) -> Duration {
    backoff_ceiling(policy, n).mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempts: 2,
            codes: vec![500, 503],
            backoff: Duration::from_millis(10),
        }
    }

    #[test]
    fn retries_listed_codes_and_connection_errors() {
        let p = policy();
        assert!(should_retry(&p, &Ok(500)));
        assert!(!should_retry(&p, &Ok(404)));
        let connect = ProxyError::UpstreamConnect {
            endpoint: "a".into(),
            reason: "refused".into(),
        };
        assert!(should_retry(&p, &Err(&connect)));
        let timeout = ProxyError::UpstreamConnectTimeout {
            endpoint: "a".into(),
            after: Duration::from_millis(300),
        };
        assert!(should_retry(&p, &Err(&timeout)));
        assert!(!should_retry(&p, &Err(&ProxyError::UpstreamTimeout)));
    }

    #[test]
    fn backoff_grows_jittered_and_caps() {
        let p = policy();
        assert_eq!(backoff_ceiling(&p, 1), Duration::from_millis(10));
        assert_eq!(backoff_ceiling(&p, 2), Duration::from_millis(30));
        assert_eq!(backoff_ceiling(&p, 8), Duration::from_millis(100));
        for n in 1..6 {
            assert!(backoff(&p, n) <= backoff_ceiling(&p, n));
        }
    }
}
