//! Authorization: Istio AuthorizationPolicy semantics for the waypoint.
//!
//! - [`model`]: compiled policies; [`matcher`]: Istio's value forms and path templates;
//! - [`path`]: path normalization (the normalized path is matched and sent upstream);
//! - [`attributes`]: what a request or connection offers policies;
//! - [`engine`]: the pure decision over Istio policies (CUSTOM, DENY, ALLOW; AUDIT; dry-run);
//! - [`decide`]: the one decision HTTP requests and TCP tunnels go through: the
//!   snapshot's [`Engine`] (RBAC chains or policies), the CUSTOM check, DENY/ALLOW;
//! - [`ext`]: CUSTOM policies: external authorization (Envoy ext_authz);
//! - [`chain`]: the xDS engine's per-port chains of Envoy RBAC and ext_authz filters;
//! - [`AuthzLayer`]: the tower layer that enforces it (403 `RBAC: access denied`).

pub mod attributes;
pub mod chain;
pub mod decide;
pub mod engine;
pub mod ext;
mod layer;
pub mod matcher;
pub mod model;
pub mod path;

pub use attributes::{Attributes, HttpAttributes, JwtAuth};
pub use chain::{AuthzFilter, ExtAuthzFilter};
pub use decide::{authorize, CustomOutcome, Denied, Subject};
pub use engine::{evaluate, Decision, Verdict};
pub use layer::{AuthzLayer, AuthzService};

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use model::Policy;

/// Process-wide authorization decision counters (enforced decisions only).
#[derive(Debug, Default)]
pub struct DecisionCounters {
    /// Requests and tunnels allowed where at least one policy applied.
    pub allowed: std::sync::atomic::AtomicU64,
    /// Requests and tunnels denied.
    pub denied: std::sync::atomic::AtomicU64,
}

/// The decision counters, read by the admin `/stats`.
pub static DECISIONS: DecisionCounters = DecisionCounters {
    allowed: std::sync::atomic::AtomicU64::new(0),
    denied: std::sync::atomic::AtomicU64::new(0),
};

/// Counts an enforced verdict.
pub fn count(v: &Verdict) {
    let c = if v.allowed() {
        &DECISIONS.allowed
    } else {
        &DECISIONS.denied
    };
    c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// How a snapshot authorizes traffic: the engine its source chose, and path
/// normalization.
#[derive(Debug, Default, Serialize)]
pub struct PolicySet {
    /// The engine.
    #[serde(flatten)]
    pub engine: Engine,
    /// Path normalization in force.
    #[serde(skip)]
    pub normalization: path::Normalization,
}

/// The authorization engine of a snapshot, chosen by its source.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// Istio AuthorizationPolicies (the local configuration): CUSTOM, DENY, ALLOW.
    Policies(Policies),
    /// Envoy RBAC and ext_authz filter chains, as istiod sends them over xDS.
    Rbac(RbacChains),
}

impl Default for Engine {
    fn default() -> Self {
        Engine::Policies(Policies::default())
    }
}

impl PolicySet {
    /// Whether authorizing a request to `target` may ask an ext_authz provider (a CUSTOM
    /// policy or an ext_authz filter applies to it). When not, the decision never waits.
    pub fn may_ask_provider(&self, target: &crate::model::Target) -> bool {
        match &self.engine {
            Engine::Rbac(chains) => chains
                .for_target(target)
                .is_some_and(|c| c.iter().any(|f| matches!(f, AuthzFilter::ExtAuthz(_)))),
            Engine::Policies(p) => {
                let custom = |l: &[Arc<Policy>]| {
                    l.iter()
                        .any(|p| matches!(p.action, model::Action::Custom(_)))
                };
                let service = crate::model::with_service_key(target.service_name(), |key| {
                    key.and_then(|k| p.services.get(k))
                        .is_some_and(|l| custom(l))
                });
                custom(&p.gateway) || service
            }
        }
    }
}

/// Istio AuthorizationPolicies bound to this waypoint.
#[derive(Debug, Default, Serialize)]
pub struct Policies {
    /// Bound to the waypoint Gateway or its GatewayClass: every request.
    pub gateway: Vec<Arc<Policy>>,
    /// Bound to a Service (`namespace/name`): requests to it.
    pub services: BTreeMap<String, Vec<Arc<Policy>>>,
    /// External authorization providers (MeshConfig `extensionProviders`), by name.
    pub providers: ext::Providers,
}

impl Policies {
    /// The policies for traffic to `service`, or to a pod (`None`).
    pub fn for_service(
        &self,
        service: Option<&crate::model::NamespacedName>,
    ) -> std::borrow::Cow<'_, [Arc<Policy>]> {
        crate::model::with_service_key(service, |key| self.for_target(key))
    }

    /// The policies for traffic to `service` (`namespace/name`), or to a pod (`None`).
    pub fn for_target(&self, service: Option<&str>) -> std::borrow::Cow<'_, [Arc<Policy>]> {
        crate::model::bound(&self.gateway, service.and_then(|s| self.services.get(s)))
    }
}

/// Envoy RBAC and ext_authz filter chains by Service port (`namespace/name:port`).
#[derive(Debug, Default)]
pub struct RbacChains(pub BTreeMap<String, Arc<Vec<AuthzFilter>>>);

impl RbacChains {
    /// The chain for traffic to `target` (a Service port), if it has one.
    pub fn for_target(&self, target: &crate::model::Target) -> Option<&[AuthzFilter]> {
        match target {
            crate::model::Target::Service { service, port } if !self.0.is_empty() => {
                crate::model::with_key(&service.name, Some(*port), |key| self.0.get(key))
                    .map(|c| c.as_slice())
            }
            _ => None,
        }
    }
}

impl Serialize for RbacChains {
    /// The config dump lists which ports have chains and how many filters each has (the
    /// filters themselves are in the xDS resources' own dump).
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v.len())))
    }
}

impl PolicySet {
    /// Istio policies.
    pub fn policies(policies: Policies, normalization: path::Normalization) -> Self {
        Self {
            engine: Engine::Policies(policies),
            normalization,
        }
    }

    /// Envoy RBAC chains, with the connection manager's path normalization.
    pub fn rbac(chains: RbacChains, normalization: path::Normalization) -> Self {
        Self {
            engine: Engine::Rbac(chains),
            normalization,
        }
    }

    /// The Istio policies, when that is the engine.
    pub fn istio(&self) -> Option<&Policies> {
        match &self.engine {
            Engine::Policies(p) => Some(p),
            Engine::Rbac(_) => None,
        }
    }

    /// Every bound Istio policy, once (none under RBAC).
    pub fn all(&self) -> Vec<&Arc<Policy>> {
        let Some(p) = self.istio() else {
            return Vec::new();
        };
        let mut out: Vec<&Arc<Policy>> = p
            .gateway
            .iter()
            .chain(p.services.values().flatten())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out.dedup_by(|a, b| Arc::ptr_eq(a, b));
        out
    }

    /// Whether nothing is authorized at all.
    pub fn is_empty(&self) -> bool {
        match &self.engine {
            Engine::Policies(p) => p.gateway.is_empty() && p.services.is_empty(),
            Engine::Rbac(c) => c.0.is_empty(),
        }
    }
}
