//! Authorization: Istio AuthorizationPolicy semantics for the waypoint.
//!
//! - [`model`]: compiled policies; [`matcher`]: Istio's value forms and path templates;
//! - [`path`]: path normalization (the normalized path is matched and sent upstream);
//! - [`attributes`]: what a request or connection offers policies;
//! - [`engine`]: the pure decision (CUSTOM, DENY, ALLOW; AUDIT; dry-run);
//! - [`AuthzLayer`]: the tower layer that enforces it (403 `RBAC: access denied`).

pub mod attributes;
pub mod engine;
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

/// The policies that apply to this waypoint's traffic.
#[derive(Debug, Default, Serialize)]
pub struct PolicySet {
    /// Bound to the waypoint Gateway or its GatewayClass: every request.
    pub gateway: Vec<Arc<Policy>>,
    /// Bound to a Service (`namespace/name`): requests to it.
    pub services: BTreeMap<String, Vec<Arc<Policy>>>,
    /// Path normalization in force.
    #[serde(skip)]
    pub normalization: path::Normalization,
}

impl PolicySet {
    /// The policies for traffic to `service` (`namespace/name`), or to a pod (`None`).
    pub fn for_target(&self, service: Option<&str>) -> Vec<Arc<Policy>> {
        let mut out = self.gateway.clone();
        if let Some(list) = service.and_then(|s| self.services.get(s)) {
            out.extend(list.iter().cloned());
        }
        out
    }

    /// Whether no policy applies to anything.
    pub fn is_empty(&self) -> bool {
        self.gateway.is_empty() && self.services.is_empty()
    }
}
