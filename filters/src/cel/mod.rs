//! The subset of CEL (Common Expression Language) that Istio documents for telemetry:
//! Telemetry `accessLogging.filter.expression` (Envoy's CEL access log filter) and metric
//! `tagOverrides` values (the `istio.stats` filter's `dimensions`).
//!
//! Supported: Envoy's request, response, connection, upstream and xDS attributes and
//! Istio's `upstream_peer` / `downstream_peer` (see [`Attribute`]), map indexing
//! (`request.headers['x-user']`, `upstream_peer.labels['app']`, or `.field` on a map),
//! `has()`, string, integer and boolean literals, lists of literals on the right of `in`,
//! `== != < <= > >=`, `&& || !`, `? :`, `+ - * / %` on integers, `+` on strings,
//! `size()`, `string()`, `int()`, and the string methods `startsWith`, `endsWith`,
//! `contains`, `matches` (a literal RE2-style pattern). Anything else is a compile error
//! naming the expression and what is not supported; so is a type mismatch (CEL is
//! strictly typed: `response.code == '200'` never matches, so it is refused).
//!
//! Expressions are compiled once per configuration ([`Program::compile`]); evaluation
//! reads attributes through [`Activation`] and allocates only for string results that
//! are built (concatenation, `string()`).

mod check;
mod eval;
mod parse;

use std::borrow::Cow;
use std::sync::Arc;

pub use eval::EvalError;

/// A compiled expression.
#[derive(Debug)]
pub struct Program {
    source: String,
    root: check::Node,
    ty: Type,
}

/// The static type of an expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// `bool`.
    Bool,
    /// `int` (CEL's `uint` values are read as `int`).
    Int,
    /// `string`.
    Str,
    /// A map of strings to strings (headers, labels).
    Map,
}

impl std::fmt::Display for Type {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Type::Bool => "bool",
            Type::Int => "int",
            Type::Str => "string",
            Type::Map => "map(string, string)",
        })
    }
}

/// Why an expression cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CEL expression {expr:?}: {reason}")]
pub struct CelError {
    /// The expression.
    pub expr: String,
    /// What is wrong, with the position for syntax errors.
    pub reason: String,
}

/// Which peer of the request: Istio's filter state objects `upstream_peer` (the
/// destination workload) and `downstream_peer` (the source).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    /// The destination workload.
    Upstream,
    /// The source workload.
    Downstream,
}

/// A field of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerField {
    /// Workload instance (pod) name.
    Name,
    /// Namespace.
    Namespace,
    /// Workload name.
    Workload,
    /// Cluster id.
    Cluster,
    /// Canonical service.
    Service,
    /// Canonical revision.
    Revision,
    /// `app` label (or canonical service).
    App,
    /// `version` label (or canonical revision).
    Version,
}

/// A scalar attribute (Envoy's attribute names, plus Istio's peers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Attribute {
    /// `request.path`: path and query.
    RequestPath,
    /// `request.url_path`: path without query.
    RequestUrlPath,
    /// `request.host`.
    RequestHost,
    /// `request.scheme`.
    RequestScheme,
    /// `request.method`.
    RequestMethod,
    /// `request.id` (`x-request-id`).
    RequestId,
    /// `request.referer`.
    RequestReferer,
    /// `request.useragent`.
    RequestUserAgent,
    /// `request.protocol` (`HTTP/1.1`, `HTTP/2`).
    RequestProtocol,
    /// `request.query`.
    RequestQuery,
    /// `request.size`: body bytes.
    RequestSize,
    /// `request.total_size`: headers and body.
    RequestTotalSize,
    /// `response.code`.
    ResponseCode,
    /// `response.code_details`.
    ResponseCodeDetails,
    /// `response.grpc_status`.
    ResponseGrpcStatus,
    /// `response.size`: body bytes.
    ResponseSize,
    /// `response.total_size`: headers and body.
    ResponseTotalSize,
    /// `source.address` (`ip:port`).
    SourceAddress,
    /// `source.port`.
    SourcePort,
    /// `destination.address` (`ip:port`).
    DestinationAddress,
    /// `destination.port`.
    DestinationPort,
    /// `upstream.address` (`ip:port`).
    UpstreamAddress,
    /// `upstream.port`.
    UpstreamPort,
    /// `connection.mtls`.
    ConnectionMtls,
    /// `xds.cluster_name`.
    XdsClusterName,
    /// `xds.route_name`.
    XdsRouteName,
    /// A peer's field.
    Peer(Peer, PeerField),
}

/// A map-valued attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MapAttribute {
    /// `request.headers` (lower-case names).
    RequestHeaders,
    /// `response.headers`.
    ResponseHeaders,
    /// `upstream_peer.labels` / `downstream_peer.labels`.
    PeerLabels(Peer),
}

/// A value during evaluation.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A string.
    Str(Cow<'a, str>),
    /// A map attribute (only indexed, tested with `in` or `has`).
    Map(MapAttribute),
}

impl Value<'_> {
    /// The value as a metric label or log field: strings as they are, numbers in
    /// decimal, booleans `true`/`false`.
    pub fn to_text(&self) -> Cow<'_, str> {
        match self {
            Value::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
            Value::Int(i) => Cow::Owned(i.to_string()),
            Value::Str(s) => Cow::Borrowed(s),
            Value::Map(_) => Cow::Borrowed("map"),
        }
    }
}

/// What an expression reads: the facts of one request (or connection).
pub trait Activation {
    /// A scalar attribute; `None` when the request does not have it (reading it is then
    /// an evaluation error, and `has()` is false).
    fn attribute(&self, attribute: Attribute) -> Option<Value<'_>>;
    /// The entry `key` of a map attribute; `None` when absent.
    fn entry(&self, map: MapAttribute, key: &str) -> Option<&str>;
}

impl Program {
    /// Compiles `source`, whatever its type.
    pub fn compile(source: &str) -> Result<Self, CelError> {
        let err = |reason: String| CelError {
            expr: source.to_string(),
            reason,
        };
        let ast = parse::parse(source).map_err(err)?;
        let (root, ty) = check::check(&ast).map_err(err)?;
        Ok(Self {
            source: source.to_string(),
            root,
            ty,
        })
    }

    /// Compiles a predicate (access log filters): it must be a `bool`.
    pub fn compile_bool(source: &str) -> Result<Self, CelError> {
        let p = Self::compile(source)?;
        if p.ty != Type::Bool {
            return Err(CelError {
                expr: source.to_string(),
                reason: format!("is a {}, a bool is needed", p.ty),
            });
        }
        Ok(p)
    }

    /// Compiles a value (metric dimensions): a string, int or bool, not a map.
    pub fn compile_value(source: &str) -> Result<Self, CelError> {
        let p = Self::compile(source)?;
        if p.ty == Type::Map {
            return Err(CelError {
                expr: source.to_string(),
                reason: "is a map; index it to get a value".into(),
            });
        }
        Ok(p)
    }

    /// The source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The static type.
    pub fn ty(&self) -> Type {
        self.ty
    }

    /// Evaluates against `activation`.
    pub fn eval<'a>(&'a self, activation: &'a dyn Activation) -> Result<Value<'a>, EvalError> {
        eval::eval(&self.root, activation)
    }

    /// Evaluates a predicate: an evaluation error is `false` (as Envoy's CEL filter).
    pub fn matches(&self, activation: &dyn Activation) -> bool {
        matches!(self.eval(activation), Ok(Value::Bool(true)))
    }
}

/// A compiled expression shared by configuration snapshots: compared and serialized by
/// its source.
#[derive(Clone)]
pub struct Expression(pub Arc<Program>);

impl Expression {
    /// Compiles a predicate.
    pub fn predicate(source: &str) -> Result<Self, CelError> {
        Program::compile_bool(source).map(|p| Self(Arc::new(p)))
    }

    /// Compiles a value expression.
    pub fn value(source: &str) -> Result<Self, CelError> {
        Program::compile_value(source).map(|p| Self(Arc::new(p)))
    }

    /// The source text.
    pub fn source(&self) -> &str {
        self.0.source()
    }
}

impl std::ops::Deref for Expression {
    type Target = Program;
    fn deref(&self) -> &Program {
        &self.0
    }
}

impl std::fmt::Debug for Expression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.source())
    }
}

impl PartialEq for Expression {
    fn eq(&self, other: &Self) -> bool {
        self.source() == other.source()
    }
}

impl Eq for Expression {}

impl std::hash::Hash for Expression {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.source().hash(state)
    }
}

impl serde::Serialize for Expression {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.source())
    }
}

#[cfg(test)]
mod tests;
