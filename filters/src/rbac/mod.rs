//! Envoy RBAC (`envoy.filters.http.rbac`, `envoy.filters.network.rbac`) evaluated with
//! Envoy's semantics: what istiod sends a waypoint for its AuthorizationPolicies.
//!
//! - [`model`]: the configuration (rules, shadow rules, policies, permissions, principals,
//!   header/metadata/value matchers), built from istiod's protobuf by
//!   `xds::translate::rbac` (test fixtures in proto-JSON/YAML go through the same
//!   converter, `xds::translate::rbac::from_proto_json`);
//! - [`string_match`]: `StringMatcher` and full-match RE2 regexes, compiled once;
//! - [`uri_template`]: the `uri_template` path matcher (`*`, `**`, variables);
//! - [`eval`]: matching against [`crate::authz::Attributes`] and the decision of a chain of
//!   filters (every enforcing filter must allow; LOG and shadow rules never deny).

pub mod eval;
pub mod model;
pub mod string_match;
pub mod uri_template;

pub use eval::{evaluate_chain, ChainDecision, EngineResult, FilterResult, RbacInput};
pub use model::{Action, FilterKind, Permission, Policy, Principal, Rbac, RbacConfig};
