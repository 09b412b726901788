/// Why a local configuration was rejected. Each variant names what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum LocalConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A document is not YAML.
    #[error("document {document}: invalid YAML: {message}")]
    Yaml {
        /// 1-based document index.
        document: usize,
        /// The parser's message (with line and column).
        message: String,
    },
    /// An object has a missing or invalid field.
    #[error("{object}: {field}: {message}")]
    Invalid {
        /// `Kind namespace/name (document N)`.
        object: String,
        /// The field path, e.g. `spec.ports[0].port`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// No waypoint `Gateway` to serve as.
    #[error("no Gateway with gatewayClassName istio-waypoint{0}")]
    NoWaypoint(String),
    /// More than one waypoint `Gateway` and none chosen.
    #[error("several waypoint Gateways ({0}); choose one with --gateway <namespace>/<name>")]
    AmbiguousWaypoint(String),
    /// Two objects claim the same address.
    #[error(transparent)]
    Conflict(#[from] filters::model::ConflictingAddress),
}
