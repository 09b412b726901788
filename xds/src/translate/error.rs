//! Why an Envoy resource was rejected: the resource, the field and the reason. These
//! become the `error_detail` of a NACK.

/// A resource outside the supported subset, or malformed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{kind} {name}: {field}: {reason}")]
pub struct InvalidResource {
    /// `listener`, `cluster`, `endpoints`, `secret`.
    pub kind: &'static str,
    /// The resource name.
    pub name: String,
    /// Where in the resource, e.g. `filter_chains[1].filters[0]`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl InvalidResource {
    /// An error in resource `name` of `kind`.
    pub fn new(
        kind: &'static str,
        name: &str,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            name: name.to_string(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}
