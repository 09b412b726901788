//! External authorization providers, compiled from MeshConfig `extensionProviders`
//! (`envoyExtAuthzGrpc`, `envoyExtAuthzHttp`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};
use serde::Serialize;

/// Istio's default check timeout when the provider sets none (600 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// A header name pattern from the provider settings: exact, `prefix*` or `*suffix`,
/// matched case-insensitively (as Istio compiles them for Envoy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum HeaderPattern {
    /// The whole name.
    Exact(String),
    /// `x-*`.
    Prefix(String),
    /// `*-id`.
    Suffix(String),
}

impl HeaderPattern {
    /// Parses Istio's form; a lone `*` is refused, as istiod refuses it.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "*" {
            return Err(
                "a single wildcard (\"*\") is not supported: use a prefix or suffix match".into(),
            );
        }
        let lower = s.to_ascii_lowercase();
        Ok(if let Some(rest) = lower.strip_prefix('*') {
            HeaderPattern::Suffix(rest.to_string())
        } else if let Some(rest) = lower.strip_suffix('*') {
            HeaderPattern::Prefix(rest.to_string())
        } else {
            HeaderPattern::Exact(lower)
        })
    }

    /// Whether `name` (any case) matches.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        match self {
            HeaderPattern::Exact(e) => name == *e,
            HeaderPattern::Prefix(p) => name.starts_with(p.as_str()),
            HeaderPattern::Suffix(s) => name.ends_with(s.as_str()),
        }
    }
}

/// Whether any pattern matches `name`.
pub fn any_matches(patterns: &[HeaderPattern], name: &str) -> bool {
    patterns.iter().any(|p| p.matches(name))
}

/// `includeRequestBodyInCheck`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BodySettings {
    /// Most body bytes buffered for the check.
    pub max_request_bytes: u32,
    /// Send the first `max_request_bytes` of a longer body instead of answering 413.
    pub allow_partial_message: bool,
    /// gRPC only: send the body as bytes (`raw_body`) rather than as a UTF-8 string.
    pub pack_as_bytes: bool,
}

/// The HTTP-only settings of `envoyExtAuthzHttp`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HttpSettings {
    /// Prepended to the original path in the check request.
    pub path_prefix: String,
    /// Client request headers sent in the check besides the ones always sent.
    pub include_request_headers: Vec<HeaderPattern>,
    /// Fixed headers added to the check request.
    #[serde(skip)]
    pub additional_headers: Vec<(HeaderName, HeaderValue)>,
    /// Authorization response headers copied to the upstream request on allow.
    pub headers_to_upstream_on_allow: Vec<HeaderPattern>,
    /// Authorization response headers added to the client's response on allow.
    pub headers_to_downstream_on_allow: Vec<HeaderPattern>,
    /// Authorization response headers sent to the client on deny (all of them when empty).
    pub headers_to_downstream_on_deny: Vec<HeaderPattern>,
}

/// Which protocol the provider speaks.
#[derive(Debug, Clone, Serialize)]
pub enum ProviderKind {
    /// `envoy.service.auth.v3.Authorization/Check` over gRPC.
    Grpc,
    /// Plain HTTP: the original request (headers filtered) is replayed to the server.
    Http(HttpSettings),
}

/// One usable external authorization provider.
#[derive(Debug, Clone, Serialize)]
pub struct Provider {
    /// The name policies refer to.
    pub name: String,
    /// `service`: a Service hostname (`name.ns.svc.cluster.local`, optionally
    /// `ns/hostname`), an IP literal, or another DNS name.
    pub service: String,
    /// `port`.
    pub port: u16,
    /// `timeout` (default [`DEFAULT_TIMEOUT`]).
    pub timeout: Duration,
    /// `failOpen`: an unreachable or failing server allows the request.
    pub fail_open: bool,
    /// `statusOnError` (default 403): what the client gets when the check fails closed.
    #[serde(serialize_with = "ser_status")]
    pub status_on_error: StatusCode,
    /// `includeRequestBodyInCheck`.
    pub body: Option<BodySettings>,
    /// The protocol and its settings.
    pub kind: ProviderKind,
    /// Over xDS, the `outbound|<port>||<host>` cluster istiod named for the server: the
    /// provider is then only the snapshot's Service `service` (built from that cluster and
    /// its EDS endpoints), never an IP literal or a DNS lookup. `None` for MeshConfig
    /// providers (the local configuration).
    pub cluster: Option<String>,
}

fn ser_status<S: serde::Serializer>(s: &StatusCode, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_u16(s.as_u16())
}

impl Provider {
    /// `envoyExtAuthzGrpc` or `envoyExtAuthzHttp`.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            ProviderKind::Grpc => "envoyExtAuthzGrpc",
            ProviderKind::Http(_) => "envoyExtAuthzHttp",
        }
    }
}

/// A provider as the configuration declared it: usable, or why not (istiod keeps
/// invalid providers by name too, so that the policies naming them deny everything).
#[derive(Debug, Clone, Serialize)]
pub enum ProviderEntry {
    /// Usable.
    Ready(Arc<Provider>),
    /// Declared, but unusable: the reason (a bad field, or not an ext_authz kind).
    Invalid(String),
}

/// The providers by name.
pub type Providers = BTreeMap<String, ProviderEntry>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_patterns() {
        let p = HeaderPattern::parse("X-Ext-*").unwrap();
        assert!(p.matches("x-ext-authz"));
        assert!(!p.matches("x-other"));
        let s = HeaderPattern::parse("*-Id").unwrap();
        assert!(s.matches("X-REQUEST-ID"));
        let e = HeaderPattern::parse("Cookie").unwrap();
        assert!(e.matches("cookie") && !e.matches("cookies"));
        assert!(HeaderPattern::parse("*").is_err());
    }
}
