//! The HTTP connection manager's `tracing` (an OpenTelemetry provider whose collector is an
//! `outbound|<port>||<host>` cluster, sampling, custom tags) into the same tracing settings
//! the local configuration's Telemetry resources produce.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
use envoy_types::pb::envoy::config::core::v3::{GrpcService, HttpService};
use envoy_types::pb::envoy::config::trace::v3::tracing::{http::ConfigType, Http};
use envoy_types::pb::envoy::config::trace::v3::OpenTelemetryConfig;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing;
use envoy_types::pb::envoy::r#type::tracing::v3::custom_tag;
use filters::model::telemetry::{CustomTag, OtlpProtocol, TracingConfig};
use prost::Message;

use super::Bad;

/// The collector a cluster stands for: the Service host and port of
/// `outbound|4317||otel.observability.svc.cluster.local`, and the cluster's name.
#[derive(Debug, PartialEq)]
pub(super) struct Collector {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) cluster: String,
}

pub(super) fn collector(cluster: &str) -> Option<Collector> {
    let mut parts = cluster.split('|');
    if parts.next()? != "outbound" {
        return None;
    }
    let port: u16 = parts.next()?.parse().ok()?;
    let _subset = parts.next()?;
    let host = parts.next()?;
    (!host.is_empty()).then(|| Collector {
        host: host.to_string(),
        port,
        cluster: cluster.to_string(),
    })
}

/// Envoy's export timeout when the provider sets none.
const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The tracing settings, or `None` when the connection manager has no provider.
pub fn convert(t: &Tracing, at: &str) -> Result<Option<TracingConfig>, Bad> {
    let Some(provider) = &t.provider else {
        return Ok(None);
    };
    let at = format!("{at}.tracing.provider");
    let otel = decode_otel(provider, &at)?;
    let (collector, protocol, timeout) = match (&otel.grpc_service, &otel.http_service) {
        (Some(g), None) => grpc_exporter(g, &at)?,
        (None, Some(h)) => http_exporter(h, &at)?,
        _ => {
            return Err((
                at,
                "exactly one of grpc_service and http_service is required".into(),
            ))
        }
    };
    Ok(Some(TracingConfig {
        provider: provider.name.clone(),
        service: collector.host,
        port: collector.port,
        cluster: Some(collector.cluster),
        // Envoy's OpenTelemetry tracer writes `service_name` as the resource's
        // `service.name`; istiod fills it with the proxy's service cluster.
        service_name: (!otel.service_name.is_empty()).then(|| otel.service_name.clone()),
        protocol,
        timeout,
        sampling_percentage: t.random_sampling.as_ref().map(|p| p.value).unwrap_or(100.0),
        custom_tags: custom_tags(t),
        max_tag_length: t
            .max_path_tag_length
            .as_ref()
            .map(|v| v.value as usize)
            .unwrap_or(256),
    }))
}

/// The provider's `OpenTelemetryConfig`; other providers are rejected.
fn decode_otel(provider: &Http, at: &str) -> Result<OpenTelemetryConfig, Bad> {
    let Some(ConfigType::TypedConfig(any)) = &provider.config_type else {
        return Err((at.to_string(), "missing typed_config".into()));
    };
    if !any
        .type_url
        .ends_with("envoy.config.trace.v3.OpenTelemetryConfig")
    {
        return Err((
            at.to_string(),
            format!(
                "only OpenTelemetry tracing is supported, got {}",
                any.type_url
            ),
        ));
    }
    OpenTelemetryConfig::decode(any.value.as_slice())
        .map_err(|e| (at.to_string(), format!("cannot decode: {e}")))
}

/// Endpoint, OTLP/gRPC protocol and timeout of an `envoy_grpc` exporter.
pub(super) fn grpc_exporter(
    g: &GrpcService,
    at: &str,
) -> Result<(Collector, OtlpProtocol, Duration), Bad> {
    let Some(TargetSpecifier::EnvoyGrpc(e)) = &g.target_specifier else {
        return Err((
            format!("{at}.grpc_service"),
            "only envoy_grpc targets are supported".into(),
        ));
    };
    let endpoint = collector(&e.cluster_name).ok_or_else(|| {
        (
            format!("{at}.grpc_service.envoy_grpc.cluster_name"),
            format!(
                "{:?} is not an outbound|<port>||<host> cluster",
                e.cluster_name
            ),
        )
    })?;
    let metadata = g
        .initial_metadata
        .iter()
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect();
    Ok((
        endpoint,
        OtlpProtocol::Grpc { metadata },
        super::duration(g.timeout.as_ref()).unwrap_or(DEFAULT_EXPORT_TIMEOUT),
    ))
}

/// Endpoint, OTLP/HTTP protocol (path, headers) and timeout of an HTTP exporter.
fn http_exporter(h: &HttpService, at: &str) -> Result<(Collector, OtlpProtocol, Duration), Bad> {
    let uri = h.http_uri.as_ref().ok_or_else(|| {
        (
            format!("{at}.http_service"),
            "http_uri is required".to_string(),
        )
    })?;
    let cluster = match &uri.http_upstream_type {
        Some(envoy_types::pb::envoy::config::core::v3::http_uri::HttpUpstreamType::Cluster(c)) => {
            c.clone()
        }
        _ => {
            return Err((
                format!("{at}.http_service.http_uri"),
                "a cluster is required".into(),
            ))
        }
    };
    let endpoint = collector(&cluster).ok_or_else(|| {
        (
            format!("{at}.http_service.http_uri.cluster"),
            format!("{cluster:?} is not an outbound|<port>||<host> cluster"),
        )
    })?;
    let path = uri
        .uri
        .parse::<http::Uri>()
        .ok()
        .map(|u| u.path().to_string())
        .filter(|p| p != "/")
        .unwrap_or_else(|| "/v1/traces".into());
    let headers = h
        .request_headers_to_add
        .iter()
        .filter_map(|o| o.header.as_ref().map(|h| (h.key.clone(), h.value.clone())))
        .collect();
    Ok((
        endpoint,
        OtlpProtocol::Http { path, headers },
        super::duration(uri.timeout.as_ref()).unwrap_or(DEFAULT_EXPORT_TIMEOUT),
    ))
}

/// The literal, environment and request-header custom tags; metadata tags are skipped.
fn custom_tags(t: &Tracing) -> Vec<(String, CustomTag)> {
    let mut custom_tags = Vec::new();
    for tag in &t.custom_tags {
        let value = match &tag.r#type {
            Some(custom_tag::Type::Literal(l)) => CustomTag::Literal(l.value.clone()),
            Some(custom_tag::Type::Environment(e)) => CustomTag::Environment {
                name: e.name.clone(),
                default: (!e.default_value.is_empty()).then(|| e.default_value.clone()),
            },
            Some(custom_tag::Type::RequestHeader(h)) => CustomTag::Header {
                name: h.name.to_ascii_lowercase(),
                default: (!h.default_value.is_empty()).then(|| h.default_value.clone()),
            },
            // Metadata tags (dry-run policy results) are filled from the filter chain's own
            // state, which the waypoint reports through its access logs instead.
            _ => continue,
        };
        custom_tags.push((tag.tag.clone(), value));
    }
    custom_tags
}

#[cfg(test)]
mod tests {
    #[test]
    fn collector_from_cluster_name() {
        assert_eq!(
            super::collector("outbound|4317||otel.obs.svc.cluster.local"),
            Some(super::Collector {
                host: "otel.obs.svc.cluster.local".into(),
                port: 4317,
                cluster: "outbound|4317||otel.obs.svc.cluster.local".into(),
            })
        );
        assert_eq!(super::collector("inbound-vip|80|http|a"), None);
    }
}
