//! Errors from loading an Envoy RBAC configuration.

use thiserror::Error;

/// A configuration that cannot be loaded; names the field at fault.
#[derive(Debug, Error)]
pub enum RbacError {
    /// The document is not valid YAML/JSON, or a field has the wrong shape (an unknown
    /// matcher kind, a oneof with two members, an invalid regex...). `path` is the field
    /// in proto-JSON spelling (`typedConfig.rules.policies.<name>.permissions[0]...`).
    #[error("{path}: {message}")]
    Invalid {
        /// Where in the document.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The document has no RBAC filter config (`typedConfig` of another `@type`).
    #[error("{0}")]
    NotRbac(String),
}
