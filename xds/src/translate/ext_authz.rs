//! Envoy's ext_authz filters as istiod configures them for CUSTOM AuthorizationPolicies
//! (`pilot/pkg/security/authz/builder/extauthz.go`): the HTTP filter
//! (`envoy.extensions.filters.http.ext_authz.v3.ExtAuthz`, a gRPC or an HTTP service) and
//! the network filter (`envoy.extensions.filters.network.ext_authz.v3.ExtAuthz`, gRPC), into
//! [`ExtAuthzFilter`]: the same [`Provider`] the local configuration compiles from MeshConfig
//! `extensionProviders`, plus `filter_enabled_metadata`.
//!
//! The server is the `outbound|<port>||<host>` cluster istiod names; the waypoint reaches it
//! as the snapshot's Service `<host>` (from that cluster and its EDS endpoints). Every field
//! either takes effect or is an [`InvalidExtAuthz`] naming it; fields that only name or
//! select Envoy statistics (`stat_prefix`, `charge_cluster_response_stats`,
//! `emit_filter_state_stats`) are accepted.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{
    grpc_service::TargetSpecifier, http_uri::HttpUpstreamType, GrpcService, HeaderValue as PbHeader,
};
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::{
    ext_authz::Services, BufferSettings, ExtAuthz as PbHttpExtAuthz, HttpService,
};
use envoy_types::pb::envoy::extensions::filters::network::ext_authz::v3::ExtAuthz as PbNetworkExtAuthz;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    string_matcher::MatchPattern, ListStringMatcher, MetadataMatcher as PbMetadataMatcher,
};
use envoy_types::pb::google::protobuf::Any;
use filters::authz::ext::{BodySettings, HeaderPattern, HttpSettings, Provider, ProviderKind};
use filters::authz::ExtAuthzFilter;
use http::{HeaderName, HeaderValue, StatusCode};
use prost::Message;
use thiserror::Error;

/// The type URL of the HTTP ext_authz filter config.
pub const HTTP_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
/// The type URL of the network ext_authz filter config.
pub const NETWORK_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.ext_authz.v3.ExtAuthz";

/// Envoy's check timeout when the gRPC service sets none (istiod always sets one).
pub const ENVOY_DEFAULT_TIMEOUT: Duration = Duration::from_millis(200);

/// `envoy.config.core.v3.ApiVersion.V3`.
const V3: i32 = 2;

/// An ext_authz config the waypoint cannot apply as given.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {reason}")]
pub struct InvalidExtAuthz {
    /// The field, proto names (`grpc_service.google_grpc`, `http_service.path_override`).
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

type R<T> = Result<T, InvalidExtAuthz>;

fn bad<T>(field: &str, reason: impl Into<String>) -> R<T> {
    Err(InvalidExtAuthz {
        field: field.to_string(),
        reason: reason.into(),
    })
}

/// Refuses `field` when `set`.
fn unsupported(set: bool, field: &str, reason: &str) -> R<()> {
    if set {
        bad(field, reason)
    } else {
        Ok(())
    }
}

/// Decodes `any` as the message `type_url` names (`what` for the error).
fn decode<M: Message + Default>(any: &Any, type_url: &str, what: &str) -> R<M> {
    if any.type_url != type_url {
        return bad(
            "typed_config",
            format!("expected {type_url}, got {:?}", any.type_url),
        );
    }
    M::decode(any.value.as_slice()).map_err(|e| InvalidExtAuthz {
        field: "typed_config".into(),
        reason: format!("not a valid {what} ext_authz config: {e}"),
    })
}

/// The HTTP filter's `typed_config`.
pub fn http_from_any(any: &Any) -> R<ExtAuthzFilter> {
    http_filter(&decode::<PbHttpExtAuthz>(any, HTTP_TYPE, "HTTP")?)
}

/// The network filter's `typed_config`.
pub fn network_from_any(any: &Any) -> R<ExtAuthzFilter> {
    network_filter(&decode::<PbNetworkExtAuthz>(any, NETWORK_TYPE, "network")?)
}

/// `envoy.extensions.filters.http.ext_authz.v3.ExtAuthz`.
pub fn http_filter(pb: &PbHttpExtAuthz) -> R<ExtAuthzFilter> {
    check_http_unsupported(pb)?;
    let status_on_error = match &pb.status_on_error {
        None => StatusCode::FORBIDDEN,
        Some(s) => u16::try_from(s.code)
            .ok()
            .filter(|c| (100..=599).contains(c))
            .and_then(|c| StatusCode::from_u16(c).ok())
            .map_or_else(
                || {
                    bad(
                        "status_on_error.code",
                        format!("{} is not an HTTP status", s.code),
                    )
                },
                Ok,
            )?,
    };
    let body = pb.with_request_body.as_ref().map(body);
    let (target, kind) = match &pb.services {
        Some(Services::GrpcService(g)) => {
            if pb.transport_api_version != V3 {
                return bad("transport_api_version", "only V3 is supported");
            }
            if pb.allowed_headers.is_some() {
                return bad(
                    "allowed_headers",
                    "not supported with grpc_service (every header is sent, as istiod configures it)",
                );
            }
            (grpc(g, "grpc_service")?, ProviderKind::Grpc)
        }
        Some(Services::HttpService(h)) => {
            let settings = http_settings(h, pb.allowed_headers.as_ref())?;
            (http_target(h)?, ProviderKind::Http(settings))
        }
        None => return bad("services", "a grpc_service or an http_service is required"),
    };
    Ok(ExtAuthzFilter {
        provider: Arc::new(target.provider(pb.failure_mode_allow, status_on_error, body, kind)),
        enabled_metadata: enabled(pb.filter_enabled_metadata.as_ref())?,
    })
}

/// Fields of the HTTP filter the waypoint does not implement.
fn check_http_unsupported(pb: &PbHttpExtAuthz) -> R<()> {
    unsupported(
        pb.failure_mode_allow_header_add,
        "failure_mode_allow_header_add",
        "not supported",
    )?;
    unsupported(
        pb.validate_mutations,
        "validate_mutations",
        "not supported (invalid header mutations are skipped)",
    )?;
    namespaces(pb)?;
    unsupported(
        pb.filter_enabled.is_some(),
        "filter_enabled",
        "runtime fractions are not supported",
    )?;
    unsupported(
        pb.deny_at_disable.is_some(),
        "deny_at_disable",
        "not supported",
    )?;
    unsupported(
        pb.include_peer_certificate,
        "include_peer_certificate",
        "the peer certificate is not sent in checks",
    )?;
    unsupported(
        pb.include_tls_session,
        "include_tls_session",
        "the TLS session is not sent in checks",
    )?;
    unsupported(
        !pb.bootstrap_metadata_labels_key.is_empty(),
        "bootstrap_metadata_labels_key",
        "not supported",
    )?;
    unsupported(
        pb.disallowed_headers.is_some(),
        "disallowed_headers",
        "not supported",
    )?;
    unsupported(
        pb.encode_raw_headers,
        "encode_raw_headers",
        "checks carry headers as strings",
    )?;
    unsupported(
        pb.decoder_header_mutation_rules.is_some(),
        "decoder_header_mutation_rules",
        "not supported",
    )?;
    unsupported(
        pb.filter_metadata.is_some(),
        "filter_metadata",
        "not supported",
    )?;
    unsupported(
        pb.max_denied_response_body_bytes != 0,
        "max_denied_response_body_bytes",
        "denied bodies are sent whole",
    )?;
    unsupported(
        pb.enforce_response_header_limits,
        "enforce_response_header_limits",
        "not supported",
    )?;
    unsupported(pb.shadow_mode, "shadow_mode", "not supported")?;
    unsupported(
        pb.emit_client_span.as_ref().is_some_and(|b| b.value),
        "emit_client_span",
        "not supported",
    )
    // Accepted: `clear_route_cache` (routes are chosen after authorization, so they always
    // see the headers the server set), `enable_dynamic_metadata_ingestion` (nothing in the
    // waypoint reads ext_authz's dynamic metadata), and the statistics fields.
}

fn namespaces(pb: &PbHttpExtAuthz) -> R<()> {
    for (set, field) in [
        (
            &pb.metadata_context_namespaces,
            "metadata_context_namespaces",
        ),
        (
            &pb.typed_metadata_context_namespaces,
            "typed_metadata_context_namespaces",
        ),
        (
            &pb.route_metadata_context_namespaces,
            "route_metadata_context_namespaces",
        ),
        (
            &pb.route_typed_metadata_context_namespaces,
            "route_typed_metadata_context_namespaces",
        ),
    ] {
        unsupported(
            !set.is_empty(),
            field,
            "metadata context is not sent in checks",
        )?;
    }
    Ok(())
}

/// `envoy.extensions.filters.network.ext_authz.v3.ExtAuthz`.
pub fn network_filter(pb: &PbNetworkExtAuthz) -> R<ExtAuthzFilter> {
    if pb.transport_api_version != V3 {
        return bad("transport_api_version", "only V3 is supported");
    }
    unsupported(
        pb.include_peer_certificate,
        "include_peer_certificate",
        "the peer certificate is not sent in checks",
    )?;
    unsupported(
        pb.include_tls_session,
        "include_tls_session",
        "the TLS session is not sent in checks",
    )?;
    unsupported(
        !pb.bootstrap_metadata_labels_key.is_empty(),
        "bootstrap_metadata_labels_key",
        "not supported",
    )?;
    unsupported(
        pb.send_tls_alert_on_denial,
        "send_tls_alert_on_denial",
        "the tunnel carries no TLS of the waypoint's",
    )?;
    unsupported(
        !pb.metadata_context_namespaces.is_empty(),
        "metadata_context_namespaces",
        "metadata context is not sent in checks",
    )?;
    unsupported(
        !pb.typed_metadata_context_namespaces.is_empty(),
        "typed_metadata_context_namespaces",
        "metadata context is not sent in checks",
    )?;
    unsupported(pb.shadow_mode, "shadow_mode", "not supported")?;
    let Some(g) = &pb.grpc_service else {
        return bad("grpc_service", "required");
    };
    let target = grpc(g, "grpc_service")?;
    Ok(ExtAuthzFilter {
        // A closed tunnel has no status: `status_on_error` does not exist here.
        provider: Arc::new(target.provider(
            pb.failure_mode_allow,
            StatusCode::FORBIDDEN,
            None,
            ProviderKind::Grpc,
        )),
        enabled_metadata: enabled(pb.filter_enabled_metadata.as_ref())?,
    })
}

/// Where the server is, and how long a check may take.
struct Target {
    cluster: String,
    host: String,
    port: u16,
    timeout: Duration,
}

impl Target {
    fn provider(
        self,
        fail_open: bool,
        status_on_error: StatusCode,
        body: Option<BodySettings>,
        kind: ProviderKind,
    ) -> Provider {
        Provider {
            name: self.cluster.clone(),
            service: self.host,
            port: self.port,
            timeout: self.timeout,
            fail_open,
            status_on_error,
            body,
            kind,
            cluster: Some(self.cluster),
        }
    }
}

/// `outbound|<port>||<host>` into the host and port.
fn outbound_cluster(name: &str, field: &str) -> R<(String, u16)> {
    let parts: Vec<&str> = name.split('|').collect();
    let [kind, port, subset, host] = parts.as_slice() else {
        return bad(
            field,
            format!("{name:?} is not an outbound|<port>||<host> cluster"),
        );
    };
    let port = port.parse::<u16>().ok().filter(|p| *p > 0);
    match (*kind, port, subset.is_empty(), host.is_empty()) {
        ("outbound", Some(port), true, false) => Ok((host.to_string(), port)),
        _ => bad(
            field,
            format!("{name:?} is not an outbound|<port>||<host> cluster"),
        ),
    }
}

fn timeout(d: Option<&envoy_types::pb::google::protobuf::Duration>, field: &str) -> R<Duration> {
    let Some(d) = d else {
        return Ok(ENVOY_DEFAULT_TIMEOUT);
    };
    if d.seconds < 0 || d.nanos < 0 || (d.seconds == 0 && d.nanos == 0) {
        return bad(field, "must be positive");
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// `envoy.config.core.v3.GrpcService` with `envoy_grpc`.
fn grpc(g: &GrpcService, at: &str) -> R<Target> {
    let f = |s: &str| format!("{at}.{s}");
    unsupported(
        !g.initial_metadata.is_empty(),
        &f("initial_metadata"),
        "not supported",
    )?;
    unsupported(
        g.retry_policy.is_some(),
        &f("retry_policy"),
        "not supported",
    )?;
    let e = match &g.target_specifier {
        Some(TargetSpecifier::EnvoyGrpc(e)) => e,
        Some(TargetSpecifier::GoogleGrpc(_)) => {
            return bad(
                &f("google_grpc"),
                "only envoy_grpc (a cluster) is supported",
            )
        }
        None => return bad(at, "envoy_grpc is required"),
    };
    unsupported(
        e.retry_policy.is_some(),
        &f("envoy_grpc.retry_policy"),
        "not supported",
    )?;
    unsupported(
        e.max_receive_message_length.is_some(),
        &f("envoy_grpc.max_receive_message_length"),
        "not supported",
    )?;
    // `skip_envoy_headers` is accepted either way: the waypoint sends no x-envoy-* headers
    // on its calls to the server.
    let (host, port) = outbound_cluster(&e.cluster_name, &f("envoy_grpc.cluster_name"))?;
    if !e.authority.is_empty() && e.authority != host {
        return bad(
            &f("envoy_grpc.authority"),
            format!(
                "{:?}: only the cluster's host ({host}) is supported",
                e.authority
            ),
        );
    }
    Ok(Target {
        cluster: e.cluster_name.clone(),
        host,
        port,
        timeout: timeout(g.timeout.as_ref(), &f("timeout"))?,
    })
}

/// The server of an `http_service`: `server_uri` (its `uri` is not used, as in Envoy).
fn http_target(h: &HttpService) -> R<Target> {
    let Some(uri) = &h.server_uri else {
        return bad("http_service.server_uri", "required");
    };
    let cluster = match &uri.http_upstream_type {
        Some(HttpUpstreamType::Cluster(c)) => c,
        None => return bad("http_service.server_uri.cluster", "required"),
    };
    let (host, port) = outbound_cluster(cluster, "http_service.server_uri.cluster")?;
    if uri.timeout.is_none() {
        return bad("http_service.server_uri.timeout", "required");
    }
    Ok(Target {
        cluster: cluster.clone(),
        host,
        port,
        timeout: timeout(uri.timeout.as_ref(), "http_service.server_uri.timeout")?,
    })
}

/// What the HTTP service sends and passes on.
fn http_settings(h: &HttpService, allowed: Option<&ListStringMatcher>) -> R<HttpSettings> {
    unsupported(
        !h.path_override.is_empty(),
        "http_service.path_override",
        "not supported",
    )?;
    unsupported(
        h.retry_policy.is_some(),
        "http_service.retry_policy",
        "not supported",
    )?;
    if !h.path_prefix.is_empty() && !h.path_prefix.starts_with('/') {
        return bad("http_service.path_prefix", "must begin with /");
    }
    let mut settings = HttpSettings {
        path_prefix: h.path_prefix.clone(),
        include_request_headers: patterns(allowed, "allowed_headers")?,
        ..Default::default()
    };
    if let Some(req) = &h.authorization_request {
        // Deprecated in Envoy for the filter's `allowed_headers`, still decoded.
        #[allow(deprecated)]
        let old_allowed = req.allowed_headers.is_some();
        unsupported(
            old_allowed,
            "http_service.authorization_request.allowed_headers",
            "use the filter's allowed_headers (as istiod does)",
        )?;
        settings.additional_headers = req
            .headers_to_add
            .iter()
            .enumerate()
            .map(|(i, h)| {
                header(
                    h,
                    &format!("http_service.authorization_request.headers_to_add[{i}]"),
                )
            })
            .collect::<R<_>>()?;
    }
    if let Some(resp) = &h.authorization_response {
        let at = "http_service.authorization_response";
        unsupported(
            resp.allowed_upstream_headers_to_append.is_some(),
            &format!("{at}.allowed_upstream_headers_to_append"),
            "not supported",
        )?;
        unsupported(
            resp.dynamic_metadata_from_headers.is_some(),
            &format!("{at}.dynamic_metadata_from_headers"),
            "not supported",
        )?;
        settings.headers_to_upstream_on_allow = patterns(
            resp.allowed_upstream_headers.as_ref(),
            &format!("{at}.allowed_upstream_headers"),
        )?;
        settings.headers_to_downstream_on_deny = patterns(
            resp.allowed_client_headers.as_ref(),
            &format!("{at}.allowed_client_headers"),
        )?;
        settings.headers_to_downstream_on_allow = patterns(
            resp.allowed_client_headers_on_success.as_ref(),
            &format!("{at}.allowed_client_headers_on_success"),
        )?;
    }
    Ok(settings)
}

fn header(h: &PbHeader, at: &str) -> R<(HeaderName, HeaderValue)> {
    let name = HeaderName::from_bytes(h.key.as_bytes()).map_err(|_| InvalidExtAuthz {
        field: format!("{at}.key"),
        reason: format!("invalid header name {:?}", h.key),
    })?;
    let raw = if h.raw_value.is_empty() {
        h.value.as_bytes()
    } else {
        &h.raw_value[..]
    };
    let value = HeaderValue::from_bytes(raw).map_err(|_| InvalidExtAuthz {
        field: format!("{at}.value"),
        reason: "invalid header value".into(),
    })?;
    Ok((name, value))
}

/// A header-name list (istiod: exact, prefix or suffix, `ignore_case: true`).
fn patterns(list: Option<&ListStringMatcher>, at: &str) -> R<Vec<HeaderPattern>> {
    let Some(list) = list else {
        return Ok(Vec::new());
    };
    list.patterns
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let f = format!("{at}.patterns[{i}]");
            let (value, pattern) = match &m.match_pattern {
                Some(MatchPattern::Exact(v)) => (v, HeaderPattern::Exact(v.to_ascii_lowercase())),
                Some(MatchPattern::Prefix(v)) if !v.is_empty() => {
                    (v, HeaderPattern::Prefix(v.to_ascii_lowercase()))
                }
                Some(MatchPattern::Suffix(v)) if !v.is_empty() => {
                    (v, HeaderPattern::Suffix(v.to_ascii_lowercase()))
                }
                _ => {
                    return bad(
                        &f,
                        "only exact, prefix and suffix header names are supported",
                    )
                }
            };
            // Header names are lower case: a case-sensitive upper-case pattern matches none.
            if !m.ignore_case && value.chars().any(|c| c.is_ascii_uppercase()) {
                return bad(
                    &f,
                    format!("{value:?} is case-sensitive and can match no header"),
                );
            }
            Ok(pattern)
        })
        .collect()
}

fn body(b: &BufferSettings) -> BodySettings {
    BodySettings {
        max_request_bytes: b.max_request_bytes,
        allow_partial_message: b.allow_partial_message,
        pack_as_bytes: b.pack_as_bytes,
    }
}

fn enabled(m: Option<&PbMetadataMatcher>) -> R<Option<filters::rbac::model::MetadataMatcher>> {
    m.map(|m| {
        super::rbac::metadata_matcher(m, "filter_enabled_metadata").map_err(|e| InvalidExtAuthz {
            field: e.field,
            reason: e.reason,
        })
    })
    .transpose()
}

#[cfg(test)]
mod tests;
