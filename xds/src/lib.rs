//! Configuration sources that produce the waypoint's route tables ([`filters::Snapshot`]).
//!
//! - [`local`]: a file of Kubernetes objects (`kubectl get -o yaml` output), watched for
//!   changes; the embedded default when no control plane runs.
//! - [`ads`]: the xDS subscriber (Delta ADS and SDS against istiod and pilot-agent).
//! - [`translate`]: Envoy resources (listeners, clusters, endpoints, RBAC) into the model.
//! - [`envoy`]: Envoy's protobuf types and their JSON form.
//!
//! Every source converts its input into a complete `Snapshot` outside of any lock and hands
//! it to a [`Publisher`], which swaps it in atomically. A rejected input never replaces the
//! last good configuration.

pub mod ads;
pub mod envoy;
pub mod local;
pub mod translate;

use filters::Snapshot;

/// Where configuration sources deliver their results.
pub trait Publisher: Send + Sync {
    /// The current snapshot's version (new snapshots must be numbered above it).
    fn current_version(&self) -> u64;
    /// Installs a new, fully validated snapshot.
    fn publish(&self, snapshot: Snapshot);
    /// Records that `source` produced a configuration that was rejected.
    fn reject(&self, source: &str, error: &str);
}
