//! Authorization: Istio AuthorizationPolicy semantics for the waypoint.
//!
//! - [`model`]: compiled policies; [`matcher`]: Istio's value forms and path templates;
//! - [`path`]: path normalization (the normalized path is matched and sent upstream);
//! - [`attributes`]: what a request or connection offers policies;
//! - [`engine`]: the pure decision (CUSTOM, DENY, ALLOW; AUDIT; dry-run);
//! - [`ext`]: CUSTOM policies: external authorization (Envoy ext_authz);
//! - [`AuthzLayer`]: the tower layer that enforces it (403 `RBAC: access denied`).

pub mod attributes;
pub mod engine;
pub mod ext;
mod layer;
pub mod matcher;
pub mod model;
pub mod path;

pub use attributes::{Attributes, HttpAttributes, JwtAuth};
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

/// The policies that apply to this waypoint's traffic.
#[derive(Debug, Default, Serialize)]
pub struct PolicySet {
    /// Bound to the waypoint Gateway or its GatewayClass: every request.
    pub gateway: Vec<Arc<Policy>>,
    /// Bound to a Service (`namespace/name`): requests to it.
    pub services: BTreeMap<String, Vec<Arc<Policy>>>,
    /// External authorization providers (MeshConfig `extensionProviders`), by name.
    pub providers: ext::Providers,
    /// Path normalization in force.
    #[serde(skip)]
    pub normalization: path::Normalization,
    /// Envoy RBAC filter chains received over xDS, by Service port (`namespace/name:port`),
    /// enforced instead of policies for that port.
    #[serde(skip)]
    pub rbac: BTreeMap<String, Arc<Vec<crate::rbac::RbacConfig>>>,
}

impl PolicySet {
    /// The RBAC chain for a request to `service` port `port`, if the configuration came
    /// as Envoy RBAC (xDS).
    pub fn rbac_for(
        &self,
        target: &crate::model::Target,
    ) -> Option<&Arc<Vec<crate::rbac::RbacConfig>>> {
        if self.rbac.is_empty() {
            return None;
        }
        match target {
            crate::model::Target::Service { service, port } => {
                crate::model::with_key(&service.name, Some(*port), |key| self.rbac.get(key))
            }
            crate::model::Target::Workload { .. } => None,
        }
    }

    /// Enforces an RBAC chain: `Err(policy)` when a filter denies.
    pub fn enforce_rbac(
        chain: &[crate::rbac::RbacConfig],
        attrs: &Attributes<'_>,
    ) -> Result<(), String> {
        let input = crate::rbac::RbacInput::new(attrs);
        let d = crate::rbac::evaluate_chain(chain, &input);
        for (_, p) in &d.matched {
            tracing::debug!(policy = %p, "RBAC policy matched");
        }
        if d.allowed {
            count(&Verdict::Allow(d.matched.last().map(|(_, p)| p.clone())));
            Ok(())
        } else {
            let policy = d
                .denied_by
                .and_then(|(_, p)| p)
                .unwrap_or_else(|| "no ALLOW policy matched".into());
            count(&Verdict::Deny(policy.clone()));
            Err(policy)
        }
    }

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

    /// Every bound policy, once.
    pub fn all(&self) -> Vec<&Arc<Policy>> {
        let mut out: Vec<&Arc<Policy>> = self
            .gateway
            .iter()
            .chain(self.services.values().flatten())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out.dedup_by(|a, b| Arc::ptr_eq(a, b));
        out
    }

    /// Whether no policy applies to anything.
    pub fn is_empty(&self) -> bool {
        self.gateway.is_empty() && self.services.is_empty()
    }
}
