//! MeshConfig `extensionProviders` of the ext_authz kinds (`envoyExtAuthzGrpc`,
//! `envoyExtAuthzHttp`), compiled into the providers CUSTOM AuthorizationPolicies name.
//!
//! As istiod does, a provider with an invalid field is kept by name as unusable (the
//! policies naming it deny every request to their targets) rather than rejecting the whole
//! configuration; the reason is logged once per load. Providers of other kinds are
//! recorded as unusable for CUSTOM too, so a policy naming one gets a precise reason.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use filters::authz::ext::provider::{
    BodySettings, HeaderPattern, HttpSettings, Provider, ProviderEntry, ProviderKind, Providers,
    DEFAULT_TIMEOUT,
};
use http::{HeaderName, HeaderValue, StatusCode};
use serde::Deserialize;

use super::mesh::{provider_settings, ExtensionProvider, MeshConfig};

/// A port as MeshConfig YAML writes it: a number, sometimes quoted.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PortValue {
    /// `port: 9000`.
    Number(i64),
    /// `port: "9000"`.
    Text(String),
}

/// `includeRequestBodyInCheck`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestBodySpec {
    /// Most bytes buffered.
    #[serde(default)]
    pub max_request_bytes: u32,
    /// Send a partial body rather than 413.
    #[serde(default)]
    pub allow_partial_message: bool,
    /// gRPC: send as bytes.
    #[serde(default)]
    pub pack_as_bytes: bool,
}

/// `envoyExtAuthzGrpc`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcProviderSpec {
    /// Service hostname (or `ns/hostname`), IP or DNS name.
    pub service: String,
    /// Port.
    pub port: PortValue,
    /// Check timeout (`0.5s`, `10s`, `1m`).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Allow when the server fails.
    #[serde(default)]
    pub fail_open: bool,
    /// Status when the server fails and `failOpen` is false.
    #[serde(default)]
    pub status_on_error: Option<String>,
    /// Accepted; routing always happens after the check here (see [`clear_route_cache`]).
    #[serde(default)]
    pub clear_route_cache: Option<bool>,
    /// Send the body.
    #[serde(default)]
    pub include_request_body_in_check: Option<RequestBodySpec>,
}

/// `envoyExtAuthzHttp`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpProviderSpec {
    /// Service hostname (or `ns/hostname`), IP or DNS name.
    pub service: String,
    /// Port.
    pub port: PortValue,
    /// Check timeout.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Prepended to the checked path; must start with `/`.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Allow when the server fails.
    #[serde(default)]
    pub fail_open: bool,
    /// Status when the server fails and `failOpen` is false.
    #[serde(default)]
    pub status_on_error: Option<String>,
    /// Accepted (see [`clear_route_cache`]).
    #[serde(default)]
    pub clear_route_cache: Option<bool>,
    /// Client headers sent in the check.
    #[serde(default)]
    pub include_request_headers_in_check: Vec<String>,
    /// Deprecated form of `includeRequestHeadersInCheck` (used only when that is empty).
    #[serde(default)]
    pub include_headers_in_check: Vec<String>,
    /// Fixed headers added to the check.
    #[serde(default)]
    pub include_additional_headers_in_check: BTreeMap<String, String>,
    /// Send the body.
    #[serde(default)]
    pub include_request_body_in_check: Option<RequestBodySpec>,
    /// Server headers copied upstream on allow.
    #[serde(default)]
    pub headers_to_upstream_on_allow: Vec<String>,
    /// Server headers added to the client's response on allow.
    #[serde(default)]
    pub headers_to_downstream_on_allow: Vec<String>,
    /// Server headers sent to the client on deny.
    #[serde(default)]
    pub headers_to_downstream_on_deny: Vec<String>,
}

fn port(p: &PortValue) -> Result<u16, String> {
    let n = match p {
        PortValue::Number(n) => *n,
        PortValue::Text(t) => t
            .trim()
            .parse::<i64>()
            .map_err(|_| format!("port {t:?} is not a number"))?,
    };
    u16::try_from(n)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("port must be in the range [1, 65535], found: {n}"))
}

fn status_on_error(s: &Option<String>) -> Result<StatusCode, String> {
    match s.as_deref() {
        None | Some("") => Ok(StatusCode::FORBIDDEN),
        Some(v) => v
            .trim()
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .filter(|c| c.as_u16() >= 100)
            .ok_or_else(|| format!("invalid statusOnError {v:?}: not an HTTP status code")),
    }
}

fn patterns(field: &str, values: &[String]) -> Result<Vec<HeaderPattern>, String> {
    values
        .iter()
        .map(|v| HeaderPattern::parse(v).map_err(|e| format!("{field}: {e}")))
        .collect()
}

fn body(spec: &Option<RequestBodySpec>) -> Option<BodySettings> {
    spec.as_ref().map(|b| BodySettings {
        max_request_bytes: b.max_request_bytes,
        allow_partial_message: b.allow_partial_message,
        pack_as_bytes: b.pack_as_bytes,
    })
}

/// Logs what `clearRouteCache` means here: routes are chosen after authorization, so a
/// route always sees the headers the server set (Envoy's `clearRouteCache: true`); `false`
/// cannot be honoured.
fn clear_route_cache(name: &str, value: Option<bool>) {
    if value == Some(false) {
        tracing::info!(provider = name, "clearRouteCache: false is ignored: routing happens after ext_authz, so routes always see the headers the server set");
    }
}

fn timeout(t: &Option<String>) -> Result<Duration, String> {
    match t {
        None => Ok(DEFAULT_TIMEOUT),
        Some(t) => match filters::duration::parse(t) {
            Ok(d) if d.is_zero() => Err(format!("timeout: {t:?} must be positive")),
            Ok(d) => Ok(d),
            Err(e) => Err(format!("timeout: {e}")),
        },
    }
}

fn grpc(name: &str, s: &GrpcProviderSpec) -> Result<Provider, String> {
    clear_route_cache(name, s.clear_route_cache);
    Ok(Provider {
        name: name.to_string(),
        service: s.service.clone(),
        port: port(&s.port)?,
        timeout: timeout(&s.timeout)?,
        fail_open: s.fail_open,
        status_on_error: status_on_error(&s.status_on_error)?,
        body: body(&s.include_request_body_in_check),
        kind: ProviderKind::Grpc,
        cluster: None,
    })
}

fn http(name: &str, s: &HttpProviderSpec) -> Result<Provider, String> {
    clear_route_cache(name, s.clear_route_cache);
    let path_prefix = s.path_prefix.clone().unwrap_or_default();
    if !path_prefix.is_empty() && !path_prefix.starts_with('/') {
        return Err(format!(
            "pathPrefix must begin with `/`, found: {path_prefix:?}"
        ));
    }
    if path_prefix.contains(['?', '#', ' ']) {
        return Err(format!("invalid pathPrefix {path_prefix:?}"));
    }
    let include = if s.include_request_headers_in_check.is_empty() {
        patterns("includeHeadersInCheck", &s.include_headers_in_check)?
    } else {
        patterns(
            "includeRequestHeadersInCheck",
            &s.include_request_headers_in_check,
        )?
    };
    let additional = s
        .include_additional_headers_in_check
        .iter()
        .map(|(k, v)| {
            let n = HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
                format!("includeAdditionalHeadersInCheck: invalid header name {k:?}")
            })?;
            let v = HeaderValue::from_str(v).map_err(|_| {
                format!("includeAdditionalHeadersInCheck[{k}]: invalid header value {v:?}")
            })?;
            Ok((n, v))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Provider {
        name: name.to_string(),
        service: s.service.clone(),
        port: port(&s.port)?,
        timeout: timeout(&s.timeout)?,
        fail_open: s.fail_open,
        status_on_error: status_on_error(&s.status_on_error)?,
        body: body(&s.include_request_body_in_check),
        kind: ProviderKind::Http(HttpSettings {
            path_prefix,
            include_request_headers: include,
            additional_headers: additional,
            headers_to_upstream_on_allow: patterns(
                "headersToUpstreamOnAllow",
                &s.headers_to_upstream_on_allow,
            )?,
            headers_to_downstream_on_allow: patterns(
                "headersToDownstreamOnAllow",
                &s.headers_to_downstream_on_allow,
            )?,
            headers_to_downstream_on_deny: patterns(
                "headersToDownstreamOnDeny",
                &s.headers_to_downstream_on_deny,
            )?,
        }),
        cluster: None,
    })
}

fn entry(index: usize, p: &ExtensionProvider) -> ProviderEntry {
    let compiled = if let Some(v) = &p.envoy_ext_authz_grpc {
        provider_settings::<GrpcProviderSpec>(p, index, v)
            .map_err(|e| e.to_string())
            .and_then(|s| grpc(&p.name, &s).map_err(|e| format!("envoyExtAuthzGrpc: {e}")))
    } else if let Some(v) = &p.envoy_ext_authz_http {
        provider_settings::<HttpProviderSpec>(p, index, v)
            .map_err(|e| e.to_string())
            .and_then(|s| http(&p.name, &s).map_err(|e| format!("envoyExtAuthzHttp: {e}")))
    } else {
        Err(format!(
            "it is a {} provider, not envoyExtAuthzGrpc or envoyExtAuthzHttp",
            p.kind()
        ))
    };
    match compiled {
        Ok(p) => ProviderEntry::Ready(Arc::new(p)),
        Err(why) => ProviderEntry::Invalid(why),
    }
}

/// The providers declared in `mesh`, by name. Invalid ext_authz providers are logged.
pub fn providers(mesh: &MeshConfig) -> Providers {
    let mut out = Providers::new();
    for (i, p) in mesh.extension_providers.iter().enumerate() {
        let e = entry(i, p);
        if let ProviderEntry::Invalid(why) = &e {
            if p.envoy_ext_authz_grpc.is_some() || p.envoy_ext_authz_http.is_some() {
                tracing::error!(provider = %p.name, reason = %why, "ext_authz provider is invalid: CUSTOM policies naming it deny every request");
            }
        }
        if out.insert(p.name.clone(), e).is_some() {
            tracing::warn!(provider = %p.name, "duplicate extension provider name: the last one wins");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh(yaml: &str) -> MeshConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn compiles_both_kinds() {
        let m = mesh(
            "extensionProviders:\n- name: g\n  envoyExtAuthzGrpc: {service: ext.foo.svc.cluster.local, port: \"9000\", timeout: 0.5s, failOpen: true, includeRequestBodyInCheck: {maxRequestBytes: 10}}\n- name: h\n  envoyExtAuthzHttp:\n    service: 127.0.0.1\n    port: 8000\n    pathPrefix: /check\n    statusOnError: \"503\"\n    includeRequestHeadersInCheck: [x-ext-authz]\n    includeAdditionalHeadersInCheck: {x-added: v}\n    headersToUpstreamOnAllow: [\"x-user*\"]\n    headersToDownstreamOnDeny: [\"*-reason\"]\n",
        );
        let p = providers(&m);
        let ProviderEntry::Ready(g) = &p["g"] else {
            panic!("{:?}", p["g"])
        };
        assert_eq!((g.port, g.fail_open), (9000, true));
        assert_eq!(g.timeout, Duration::from_millis(500));
        assert_eq!(g.body.unwrap().max_request_bytes, 10);
        let ProviderEntry::Ready(h) = &p["h"] else {
            panic!("{:?}", p["h"])
        };
        assert_eq!(h.status_on_error, 503);
        assert_eq!(h.timeout, DEFAULT_TIMEOUT);
        let ProviderKind::Http(s) = &h.kind else {
            panic!()
        };
        assert_eq!(s.path_prefix, "/check");
        assert_eq!(s.additional_headers.len(), 1);
    }

    #[test]
    fn invalid_providers_say_why() {
        let m = mesh(
            "extensionProviders:\n- name: port\n  envoyExtAuthzGrpc: {service: a, port: 0}\n- name: prefix\n  envoyExtAuthzHttp: {service: a, port: 1, pathPrefix: check}\n- name: star\n  envoyExtAuthzHttp: {service: a, port: 1, headersToUpstreamOnAllow: [\"*\"]}\n- name: status\n  envoyExtAuthzGrpc: {service: a, port: 1, statusOnError: abc}\n- name: typo\n  envoyExtAuthzGrpc: {service: a, port: 1, failopen: true}\n- name: otel\n  opentelemetry: {service: a, port: 1}\n",
        );
        let p = providers(&m);
        let why = |n: &str| match &p[n] {
            ProviderEntry::Invalid(w) => w.clone(),
            ProviderEntry::Ready(_) => panic!("{n} should be invalid"),
        };
        assert!(why("port").contains("[1, 65535]"));
        assert!(why("prefix").contains("pathPrefix must begin"));
        assert!(why("star").contains("single wildcard"));
        assert!(why("status").contains("statusOnError"));
        assert!(why("typo").contains("failopen"), "{}", why("typo"));
        assert!(why("otel").contains("opentelemetry provider"));
    }

    #[test]
    fn timeouts() {
        let t = |s: &str| timeout(&Some(s.to_string()));
        assert_eq!(t("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(t("200ms").unwrap(), Duration::from_millis(200));
        assert_eq!(timeout(&None).unwrap(), DEFAULT_TIMEOUT);
        assert!(t("10").is_err());
        assert_eq!(t("0s").unwrap_err(), "timeout: \"0s\" must be positive");
    }
}
