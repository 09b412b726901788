//! The route table types: Gateway API HTTPRoute and GRPCRoute, compiled for matching.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use regex::Regex;
use serde::Serialize;

use super::Backend;
use crate::model::NamespacedName;

/// Which API a route came from. GRPCRoutes on a port take precedence over HTTPRoutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RouteKind {
    /// `HTTPRoute`.
    Http,
    /// `GRPCRoute`.
    Grpc,
    /// `TCPRoute` (or istiod's TCP proxy with one or more clusters): one rule without
    /// matches whose backends each new TCP tunnel draws from; HTTP requests ignore it.
    Tcp,
}

/// One route, attached to one or more parents.
#[derive(Debug, Serialize)]
pub struct Route {
    /// `namespace/name`.
    pub name: NamespacedName,
    /// HTTPRoute, GRPCRoute or TCPRoute.
    pub kind: RouteKind,
    /// `metadata.creationTimestamp` (RFC 3339), for precedence between routes.
    pub created: Option<String>,
    /// Rules in declaration order.
    pub rules: Vec<Rule>,
    /// The name of the SERVER span of a request it routes (an xDS route's
    /// `decorator.operation`); `None` keeps the waypoint's `host:port/*`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
}

/// One rule of a route.
#[derive(Debug, Serialize)]
pub struct Rule {
    /// `name`, if set.
    pub name: Option<String>,
    /// Matches (an empty list means `PathPrefix /`).
    pub matches: Vec<RouteMatch>,
    /// Rule-level filters, in order.
    pub filters: Vec<Filter>,
    /// Weighted backends.
    pub backends: Vec<WeightedBackend>,
    /// Request and per-attempt timeouts.
    pub timeouts: Timeouts,
    /// Retry policy.
    pub retry: Option<RetryPolicy>,
    /// How the request's hash is computed for consistent-hash balancing (Envoy's route
    /// `hash_policy`, from a DestinationRule `consistentHash`).
    pub hash_policy: Vec<HashPolicy>,
}

/// One input to a request's hash.
#[derive(Debug, Clone, Serialize)]
pub struct HashPolicy {
    /// Where the hashed value comes from.
    pub source: HashSource,
    /// When this input is present, the inputs after it are not used.
    pub terminal: bool,
}

/// What a [`HashPolicy`] hashes.
#[derive(Debug, Clone, Serialize)]
pub enum HashSource {
    /// A request header's value.
    Header(#[serde(serialize_with = "ser_name")] HeaderName),
    /// A cookie's value; with a `ttl`, a request without the cookie gets one generated
    /// (from the client's address) and set on the response, as Envoy does.
    Cookie {
        /// The cookie.
        name: String,
        /// Lifetime of a generated cookie.
        ttl: Option<Duration>,
        /// Path of a generated cookie.
        path: Option<String>,
        /// More attributes of a generated cookie (`SameSite=Strict`, `Secure`), written
        /// `name=value`, or `name` alone when the value is empty.
        attributes: Vec<(String, String)>,
    },
    /// The client's IP address.
    SourceIp,
    /// A query parameter's value.
    QueryParameter(String),
}

/// Checks a generated cookie's attribute as Envoy does: a name, and a name and value that
/// can be written in a `Set-Cookie` header (no control characters).
pub fn check_cookie_attribute(name: &str, value: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("an attribute needs a name");
    }
    let text = |s: &str| s.bytes().all(|b| b == b'\t' || (b' '..0x7f).contains(&b));
    if !text(name) || !text(value) {
        return Err("control characters cannot be written in a Set-Cookie header");
    }
    Ok(())
}

/// `timeouts` of a rule.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Timeouts {
    /// Whole request, retries included (`timeouts.request`).
    pub request: Option<Duration>,
    /// Each attempt to a backend (`timeouts.backendRequest`).
    pub backend_request: Option<Duration>,
    /// Whether a gRPC request's `grpc-timeout` header sets its timeout (Envoy's route
    /// `max_grpc_timeout` / `max_stream_duration.grpc_timeout_header_max`, which istiod
    /// always writes as the route's timeout): `None` ignores the header; `Some(max)`
    /// makes the header's value the request timeout of a gRPC request (none without the
    /// header), capped at `max` unless `max` is zero.
    pub grpc_timeout_max: Option<Duration>,
}

impl Timeouts {
    /// The whole-request timeout of a request with `headers`.
    pub fn request_timeout(&self, headers: &http::HeaderMap) -> Option<Duration> {
        let Some(max) = self.grpc_timeout_max else {
            return self.request;
        };
        if !crate::error::is_grpc(headers) {
            return self.request;
        }
        let header = headers
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .filter(|d| !d.is_zero());
        match header {
            Some(h) if max.is_zero() => Some(h),
            Some(h) => Some(h.min(max)),
            None => (!max.is_zero()).then_some(max),
        }
    }
}

/// A `grpc-timeout` header value: up to eight digits and a unit (`H`, `M`, `S`, `m`,
/// `u`, `n`).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod grpc_timeout_tests {
    use std::time::Duration;

    fn grpc(timeout: Option<&str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("content-type", "application/grpc".parse().unwrap());
        if let Some(t) = timeout {
            h.insert("grpc-timeout", t.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_grpc_timeout_header_sets_the_timeout_capped_by_the_route() {
        assert_eq!(
            super::parse_grpc_timeout("250m"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            super::parse_grpc_timeout("2S"),
            Some(Duration::from_secs(2))
        );
        assert_eq!(super::parse_grpc_timeout("123456789S"), None);
        assert_eq!(super::parse_grpc_timeout("1x"), None);
        let uncapped = super::Timeouts {
            grpc_timeout_max: Some(Duration::ZERO),
            ..Default::default()
        };
        assert_eq!(
            uncapped.request_timeout(&grpc(Some("250m"))),
            Some(Duration::from_millis(250))
        );
        assert_eq!(uncapped.request_timeout(&grpc(None)), None);
        let capped = super::Timeouts {
            request: Some(Duration::from_secs(1)),
            grpc_timeout_max: Some(Duration::from_secs(1)),
            ..Default::default()
        };
        assert_eq!(
            capped.request_timeout(&grpc(Some("5S"))),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            capped.request_timeout(&grpc(None)),
            Some(Duration::from_secs(1))
        );
        // Not gRPC: the route's timeout.
        let mut plain = grpc(Some("250m"));
        plain.remove("content-type");
        assert_eq!(capped.request_timeout(&plain), Some(Duration::from_secs(1)));
        let ignored = super::Timeouts::default();
        assert_eq!(ignored.request_timeout(&grpc(Some("250m"))), None);
    }
}

/// `retry` of a rule.
#[derive(Debug, Clone, Serialize)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// Response codes that are retried (connection failures always are).
    pub codes: Vec<u16>,
    /// Wait between attempts.
    pub backoff: Duration,
}

/// A request match: every present condition must hold.
#[derive(Debug, Clone, Serialize)]
pub struct RouteMatch {
    /// Path condition.
    pub path: PathMatch,
    /// Header conditions (names case-insensitive).
    pub headers: Vec<HeaderMatch>,
    /// Query parameter conditions (names case-sensitive).
    pub query: Vec<QueryMatch>,
    /// Method condition.
    #[serde(serialize_with = "ser_method")]
    pub method: Option<Method>,
}

fn ser_method<S: serde::Serializer>(m: &Option<Method>, s: S) -> Result<S::Ok, S::Error> {
    match m {
        Some(m) => s.serialize_some(m.as_str()),
        None => s.serialize_none(),
    }
}

impl Default for RouteMatch {
    fn default() -> Self {
        Self {
            path: PathMatch::Prefix("/".into()),
            headers: Vec::new(),
            query: Vec::new(),
            method: None,
        }
    }
}

/// A path condition.
#[derive(Debug, Clone, Serialize)]
pub enum PathMatch {
    /// The whole path equals the value.
    Exact(String),
    /// The path starts with the value, on segment boundaries.
    Prefix(String),
    /// The whole path matches the expression.
    Regex(#[serde(serialize_with = "ser_regex")] Regex),
}

fn ser_regex<S: serde::Serializer>(r: &Regex, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.as_str())
}

/// A string condition.
#[derive(Debug, Clone, Serialize)]
pub enum StringMatch {
    /// Equal.
    Exact(String),
    /// Whole-value regular expression.
    Regex(#[serde(serialize_with = "ser_regex")] Regex),
}

impl StringMatch {
    /// Whether `value` satisfies the condition.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(v) => v == value,
            StringMatch::Regex(r) => r.is_match(value),
        }
    }
}

/// A header condition.
#[derive(Debug, Clone, Serialize)]
pub struct HeaderMatch {
    /// Header name.
    #[serde(serialize_with = "ser_name")]
    pub name: HeaderName,
    /// Value condition.
    pub value: StringMatch,
}

fn ser_name<S: serde::Serializer>(n: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(n.as_str())
}

/// A query parameter condition.
#[derive(Debug, Clone, Serialize)]
pub struct QueryMatch {
    /// Parameter name (case-sensitive).
    pub name: String,
    /// Value condition.
    pub value: StringMatch,
}

/// A backend with its weight and backend-level filters.
#[derive(Debug, Serialize)]
pub struct WeightedBackend {
    /// Where requests go, or why they cannot.
    pub target: BackendTarget,
    /// Relative weight; 0 never receives traffic.
    pub weight: u32,
    /// Filters applied only for this backend.
    pub filters: Vec<Filter>,
}

/// A resolved backendRef.
#[derive(Debug, Serialize)]
pub enum BackendTarget {
    /// A Service port.
    Backend(#[serde(serialize_with = "ser_backend")] Backend),
    /// A backendRef that cannot be used (unknown Service, unsupported kind); its share of
    /// the traffic gets 500.
    Invalid(String),
}

fn ser_backend<S: serde::Serializer>(b: &Backend, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&b.describe())
}

/// A header set/add/remove list.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HeaderModifier {
    /// Replace (or add) these headers.
    #[serde(serialize_with = "ser_pairs")]
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Append these headers.
    #[serde(serialize_with = "ser_pairs")]
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Remove these headers.
    #[serde(serialize_with = "ser_names")]
    pub remove: Vec<HeaderName>,
}

fn ser_pairs<S: serde::Serializer>(
    v: &[(HeaderName, HeaderValue)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(
        v.iter()
            .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v.as_bytes()))),
    )
}

fn ser_names<S: serde::Serializer>(v: &[HeaderName], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|n| n.as_str()))
}

/// How a redirect or rewrite changes the path.
#[derive(Debug, Clone, Serialize)]
pub enum PathModifier {
    /// Replace the whole path.
    ReplaceFullPath(String),
    /// Replace the part the `PathPrefix` match matched.
    ReplacePrefixMatch(String),
    /// Envoy's `regex_rewrite`, as istiod writes `ReplaceFullPath` and
    /// `ReplacePrefixMatch: /`: every match in the path is replaced.
    Regex(RegexRewrite),
}

/// Envoy's `regex_rewrite`: every non-overlapping match of `pattern` in the path (without
/// the query) is replaced by the substitution, where `\N` stands for capture group N.
#[derive(Debug, Clone)]
pub struct RegexRewrite {
    pattern: Regex,
    /// The substitution as configured (`\N` back-references).
    substitution: String,
    /// The substitution in the regex crate's syntax (`${N}`, `$$`).
    expansion: String,
}

impl RegexRewrite {
    /// Compiles `pattern` (RE2 syntax, as Envoy's) with `substitution`.
    pub fn new(pattern: &str, substitution: &str) -> Result<Self, regex::Error> {
        let mut expansion = String::with_capacity(substitution.len());
        let mut chars = substitution.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' if chars.peek().is_some_and(char::is_ascii_digit) => {
                    let d = chars.next().unwrap_or('0');
                    expansion.push_str(&format!("${{{d}}}"));
                }
                '\\' if chars.peek() == Some(&'\\') => {
                    chars.next();
                    expansion.push('\\');
                }
                '$' => expansion.push_str("$$"),
                c => expansion.push(c),
            }
        }
        Ok(Self {
            pattern: Regex::new(pattern)?,
            substitution: substitution.to_string(),
            expansion,
        })
    }

    /// `path` rewritten.
    pub fn apply(&self, path: &str) -> String {
        self.pattern
            .replace_all(path, self.expansion.as_str())
            .into_owned()
    }
}

impl Serialize for RegexRewrite {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("RegexRewrite", 2)?;
        st.serialize_field("pattern", self.pattern.as_str())?;
        st.serialize_field("substitution", &self.substitution)?;
        st.end()
    }
}

/// A response the route gives itself instead of forwarding (Envoy's `direct_response`;
/// istiod's answer for an HTTPRoute rule whose backends all have weight 0).
#[derive(Debug, Clone, Serialize)]
pub struct DirectResponse {
    /// Status code.
    pub status: u16,
    /// Body (`text/plain` when not empty).
    #[serde(serialize_with = "ser_bytes")]
    pub body: bytes::Bytes,
}

fn ser_bytes<S: serde::Serializer>(b: &bytes::Bytes, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(b))
}

/// `RequestRedirect`.
#[derive(Debug, Clone, Serialize)]
pub struct Redirect {
    /// New scheme.
    pub scheme: Option<String>,
    /// New host name.
    pub hostname: Option<String>,
    /// New port.
    pub port: Option<u16>,
    /// New path.
    pub path: Option<PathModifier>,
    /// 301, 302 (default), 303, 307 or 308.
    pub status: u16,
}

/// `URLRewrite`.
#[derive(Debug, Clone, Serialize)]
pub struct Rewrite {
    /// New Host.
    pub hostname: Option<String>,
    /// New path.
    pub path: Option<PathModifier>,
}

/// `RequestMirror`.
#[derive(Debug, Serialize)]
pub struct Mirror {
    /// Where copies go.
    #[serde(serialize_with = "ser_backend")]
    pub backend: Backend,
    /// Share of requests mirrored, 0.0 to 1.0.
    pub fraction: f64,
}

/// `CORS`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Cors {
    /// Allowed origins.
    pub allow_origins: Vec<OriginMatch>,
    /// Allowed methods.
    pub allow_methods: Vec<String>,
    /// Allowed request headers.
    pub allow_headers: Vec<String>,
    /// Exposed response headers.
    pub expose_headers: Vec<String>,
    /// Whether credentials are allowed.
    pub allow_credentials: bool,
    /// Preflight cache lifetime in seconds.
    pub max_age: Option<u32>,
    /// Whether a preflight from an origin not allowed goes upstream (Envoy's
    /// `forward_not_matching_preflights`, default true there); the Gateway API's `CORS`
    /// filter answers every preflight itself (false).
    pub forward_not_matching_preflights: bool,
}

/// An allowed CORS origin.
#[derive(Debug, Clone)]
pub enum OriginMatch {
    /// The Gateway API's form: an origin with `*` wildcards (`*` alone: any origin).
    Pattern(String),
    /// Envoy's `allow_origin_string_match` (exact, prefix, suffix, contains, regex).
    Matcher(crate::rbac::string_match::StringMatcher),
}

impl OriginMatch {
    /// Whether `origin` is allowed.
    pub fn matches(&self, origin: &str) -> bool {
        match self {
            OriginMatch::Pattern(pattern) => {
                pattern == "*"
                    || pattern == origin
                    || pattern.split_once('*').is_some_and(|(pre, post)| {
                        origin.starts_with(pre)
                            && origin.ends_with(post)
                            && origin.len() >= pre.len() + post.len()
                    })
            }
            OriginMatch::Matcher(m) => m.matches(origin),
        }
    }
}

impl Serialize for OriginMatch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            OriginMatch::Pattern(p) => s.serialize_str(p),
            OriginMatch::Matcher(m) => s.serialize_str(&format!("{m:?}")),
        }
    }
}

/// Fault injection on a route (Envoy's per-route `envoy.filters.http.fault`, from a
/// VirtualService `fault`): a delay, then an abort, each on a share of requests.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    /// Delay before forwarding.
    pub delay: Option<FaultDelay>,
    /// Answer instead of forwarding.
    pub abort: Option<FaultAbort>,
}

/// A fault delay.
#[derive(Debug, Clone, Serialize)]
pub struct FaultDelay {
    /// How long.
    pub duration: Duration,
    /// Share of requests delayed, 0 to 1.
    pub fraction: f64,
}

/// A fault abort.
#[derive(Debug, Clone, Serialize)]
pub struct FaultAbort {
    /// The answer.
    pub status: AbortStatus,
    /// Share of requests aborted, 0 to 1.
    pub fraction: f64,
    /// Body (Envoy's default: `fault filter abort`).
    pub body: String,
}

/// How a fault abort answers.
#[derive(Debug, Clone, Copy, Serialize)]
pub enum AbortStatus {
    /// This HTTP status.
    Http(u16),
    /// HTTP 200 with this `grpc-status` (a trailers-only gRPC answer).
    Grpc(u32),
}

/// A route filter.
#[derive(Debug, Clone, Serialize)]
pub enum Filter {
    /// `RequestHeaderModifier`.
    RequestHeaders(HeaderModifier),
    /// `ResponseHeaderModifier`.
    ResponseHeaders(HeaderModifier),
    /// `RequestRedirect`.
    Redirect(Redirect),
    /// `URLRewrite`.
    Rewrite(Rewrite),
    /// `RequestMirror`.
    Mirror(Arc<Mirror>),
    /// `CORS`.
    Cors(Cors),
    /// Answer without forwarding.
    DirectResponse(DirectResponse),
    /// Fault injection.
    Fault(Fault),
}
