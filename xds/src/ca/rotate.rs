//! Keeping a certificate from the CA current: the first one fetched before the proxy
//! starts (retrying until it comes), then renewals at half of each lifetime, retried with
//! backoff; the installed certificate keeps serving until a new one replaces it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{CaClient, Issued};
use crate::ads::sds::SecretSink;

/// First wait after a failure; doubles up to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

fn until(t: SystemTime) -> Duration {
    t.duration_since(SystemTime::now()).unwrap_or_default()
}

impl CaClient {
    /// The first certificate: retries (logging every failure, which names the missing
    /// token, the unreachable CA or the refusal) until one is issued.
    pub async fn first(&self) -> Issued {
        let mut backoff = INITIAL_BACKOFF;
        loop {
            match self.issue().await {
                Ok(issued) => {
                    tracing::info!(identity = %self.identity, serial = %issued.serial, expires_in_s = until(issued.not_after).as_secs(), "certificate issued by the CA");
                    return issued;
                }
                Err(e) => {
                    tracing::error!(identity = %self.identity, error = %e, retry_in_ms = backoff.as_millis() as u64, "no certificate from the CA; not ready");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Renews `current` at half of its lifetime, for as long as the process runs,
    /// installing each new certificate into `sink`.
    pub async fn run(self, sink: Arc<dyn SecretSink>, mut current: Issued) {
        loop {
            tokio::time::sleep(until(current.renew_at())).await;
            let mut backoff = INITIAL_BACKOFF;
            current = loop {
                let result = self.issue().await.and_then(|issued| {
                    sink.install(&issued.material)
                        .map(|()| issued)
                        .map_err(|reason| super::CaError::Invalid {
                            address: self.address(),
                            reason,
                        })
                });
                match result {
                    Ok(issued) => {
                        tracing::info!(identity = %self.identity, serial = %issued.serial, previous = %current.serial, expires_in_s = until(issued.not_after).as_secs(), "certificate rotated");
                        break issued;
                    }
                    Err(e) => {
                        tracing::warn!(identity = %self.identity, error = %e, current_expires_in_s = until(current.not_after).as_secs(), retry_in_ms = backoff.as_millis() as u64, "certificate renewal failed; the current certificate keeps serving");
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            };
        }
    }
}
