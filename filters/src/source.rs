//! What every configuration source shares: the options it builds snapshots with, and the
//! [`Publisher`] it hands them to. The sources are `kube-config` (a file of Kubernetes
//! objects) and `xds` (istiod over Delta ADS); both fill the same [`Snapshot`].

use std::sync::Arc;

use crate::authn::JwksRegistry;
use crate::authz::path::Normalization;
use crate::model::{NamespacedName, Waypoint};
use crate::Snapshot;

/// Where configuration sources deliver their results.
///
/// A source converts its input into a complete [`Snapshot`] outside of any lock and
/// publishes it; the publisher swaps it in atomically. A rejected input never replaces the
/// last good configuration.
pub trait Publisher: Send + Sync {
    /// The current snapshot's version (new snapshots must be numbered above it).
    fn current_version(&self) -> u64;
    /// Installs a new, fully validated snapshot.
    fn publish(&self, snapshot: Snapshot);
    /// Records that `source` produced a configuration that was rejected.
    fn reject(&self, source: &str, error: &str);
}

/// The options both sources build snapshots with (the command line's, once).
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// The waypoint's own Gateway. The local file may leave it out when it holds exactly
    /// one `istio-waypoint` Gateway; xDS requires it.
    pub gateway: Option<NamespacedName>,
    /// SPIFFE trust domain of workload identities.
    pub trust_domain: String,
    /// Cluster DNS suffix for Service hostnames.
    pub domain_suffix: String,
    /// Istio's root namespace (GatewayClass-bound policies live there).
    pub root_namespace: String,
    /// Path normalization before authorization (the local file's; istiod sends its own).
    pub normalization: Normalization,
    /// Where `jwksUri` keys are registered (the binary fetches them).
    pub jwks: Arc<JwksRegistry>,
}

impl Default for SourceOptions {
    fn default() -> Self {
        Self {
            gateway: None,
            trust_domain: "cluster.local".into(),
            domain_suffix: "cluster.local".into(),
            root_namespace: "istio-system".into(),
            normalization: Normalization::default(),
            jwks: Arc::default(),
        }
    }
}

impl SourceOptions {
    /// The waypoint the snapshots describe, once its Gateway is known.
    pub fn waypoint(&self, gateway: NamespacedName) -> Waypoint {
        Waypoint {
            gateway,
            trust_domain: self.trust_domain.clone(),
        }
    }
}
