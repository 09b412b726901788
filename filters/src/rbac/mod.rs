//! Envoy RBAC (`envoy.filters.http.rbac`, `envoy.filters.network.rbac`) evaluated with
//! Envoy's semantics: what istiod sends a waypoint for its AuthorizationPolicies.
//!
//! - [`model`]: the configuration (rules, shadow rules, policies, permissions, principals,
//!   header/metadata/value matchers), deserialized from proto-JSON/YAML;
//! - [`string_match`]: `StringMatcher` and full-match RE2 regexes, compiled once;
//! - [`uri_template`]: the `uri_template` path matcher (`*`, `**`, variables);
//! - [`eval`]: matching against [`crate::authz::Attributes`] and the decision of a chain of
//!   filters (every enforcing filter must allow; LOG and shadow rules never deny).

pub mod error;
pub mod eval;
pub mod model;
pub mod string_match;
pub mod uri_template;

#[cfg(test)]
mod tests;

pub use error::RbacError;
pub use eval::{evaluate_chain, ChainDecision, EngineResult, FilterResult, RbacInput};
pub use model::{Action, FilterKind, Permission, Policy, Principal, Rbac, RbacConfig, RbacFilter};

fn invalid<E: std::fmt::Display>(e: serde_path_to_error::Error<E>) -> RbacError {
    let path = e.path().to_string();
    RbacError::Invalid {
        path,
        message: e.into_inner().to_string(),
    }
}

/// Parses YAML (or JSON) into a JSON value: proto-JSON oneofs are single-key maps, which
/// serde reads as enum variants from JSON values (serde_yaml would want YAML tags).
fn json_value(text: &str) -> Result<serde_json::Value, RbacError> {
    let yaml: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| RbacError::Invalid {
        path: ".".into(),
        message: e.to_string(),
    })?;
    serde_json::to_value(yaml).map_err(|e| RbacError::Invalid {
        path: ".".into(),
        message: e.to_string(),
    })
}

fn from_value<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, RbacError> {
    serde_path_to_error::deserialize(v).map_err(invalid)
}

impl RbacFilter {
    /// Loads one `{name, typedConfig}` document (YAML or JSON).
    pub fn from_yaml(text: &str) -> Result<Self, RbacError> {
        from_value(json_value(text)?)
    }

    /// Loads a `{name, typedConfig}` JSON value (as found inside a listener).
    pub fn from_json(v: serde_json::Value) -> Result<Self, RbacError> {
        from_value(v)
    }

    /// Whether a YAML/JSON filter document holds an RBAC config (by its `@type`); other
    /// filters (ext_authz...) are not RBAC's to load.
    pub fn is_rbac_document(text: &str) -> bool {
        let Ok(v) = json_value(text) else {
            return false;
        };
        let t = v
            .get("typedConfig")
            .and_then(|c| c.get("@type"))
            .and_then(|t| t.as_str());
        matches!(t, Some(model::HTTP_RBAC_TYPE | model::NETWORK_RBAC_TYPE))
    }
}

impl RbacConfig {
    /// Loads a bare filter config (the `typedConfig`, with its `@type`), YAML or JSON.
    pub fn from_yaml(text: &str) -> Result<Self, RbacError> {
        from_value(json_value(text)?)
    }

    /// Loads a filter config from a JSON value.
    pub fn from_json(v: serde_json::Value) -> Result<Self, RbacError> {
        from_value(v)
    }
}
