//! Access log service loggers as istiod writes them for `envoyHttpAls` and `envoyTcpAls`
//! providers (`pilot/pkg/model/telemetry_logging.go` `httpGrpcAccessLogFromTelemetry`,
//! `tcpGrpcAccessLogFromTelemetry`): a `CommonGrpcAccessLogConfig` naming the provider's
//! `outbound|<port>||<host>` cluster, `log_name`, V3 transport and the filter state objects
//! to log, plus, for HTTP, the extra request and response headers.

use envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
use envoy_types::pb::envoy::extensions::access_loggers::grpc::v3::{
    CommonGrpcAccessLogConfig, HttpGrpcAccessLogConfig, TcpGrpcAccessLogConfig,
};
use filters::model::telemetry::{GrpcLogConfig, GrpcLogKind};
use prost::Message;

use super::Bad;

/// `envoy.access_loggers.http_grpc`.
pub const HTTP_GRPC: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig";
/// `envoy.access_loggers.tcp_grpc`.
pub const TCP_GRPC: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.TcpGrpcAccessLogConfig";

/// The HTTP logger at `at` (its `typed_config`).
pub fn http(bytes: &[u8], at: &str) -> Result<GrpcLogConfig, Bad> {
    let c = HttpGrpcAccessLogConfig::decode(bytes).map_err(|e| (at.to_string(), e.to_string()))?;
    if !c.additional_response_trailers_to_log.is_empty() {
        return Err((
            format!("{at}.additional_response_trailers_to_log"),
            "response trailers are not logged".into(),
        ));
    }
    let mut config = common(c.common_config.as_ref(), GrpcLogKind::Http, at)?;
    config.request_headers = headers(
        &c.additional_request_headers_to_log,
        &format!("{at}.additional_request_headers_to_log"),
    )?;
    config.response_headers = headers(
        &c.additional_response_headers_to_log,
        &format!("{at}.additional_response_headers_to_log"),
    )?;
    Ok(config)
}

/// The TCP logger at `at` (its `typed_config`).
pub fn tcp(bytes: &[u8], at: &str) -> Result<GrpcLogConfig, Bad> {
    let c = TcpGrpcAccessLogConfig::decode(bytes).map_err(|e| (at.to_string(), e.to_string()))?;
    common(c.common_config.as_ref(), GrpcLogKind::Tcp, at)
}

fn headers(names: &[String], at: &str) -> Result<Vec<String>, Bad> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let lower = n.to_ascii_lowercase();
            http::HeaderName::from_bytes(lower.as_bytes())
                .map(|_| lower)
                .map_err(|_| (format!("{at}[{i}]"), format!("{n:?} is not a header name")))
        })
        .collect()
}

fn common(
    c: Option<&CommonGrpcAccessLogConfig>,
    kind: GrpcLogKind,
    at: &str,
) -> Result<GrpcLogConfig, Bad> {
    let at = format!("{at}.common_config");
    let Some(c) = c else {
        return Err((at, "a common configuration is required".into()));
    };
    let refuse = |field: &str, why: &str| Err((format!("{at}.{field}"), why.to_string()));
    if c.log_name.is_empty() {
        return refuse("log_name", "a log name is required");
    }
    if c.grpc_stream_retry_policy.is_some() {
        return refuse(
            "grpc_stream_retry_policy",
            "retry policies are not supported",
        );
    }
    if !c.custom_tags.is_empty() {
        return refuse("custom_tags", "custom tags are not supported");
    }
    if c.buffer_flush_interval.is_some() || c.buffer_size_bytes.is_some() {
        return refuse(
            "buffer_flush_interval",
            "buffer settings are not supported (entries are sent every 500 ms or 512 entries)",
        );
    }
    // AUTO (0) and V3 (2); V2 (1) is gone from Envoy.
    if c.transport_api_version != 0 && c.transport_api_version != 2 {
        return refuse("transport_api_version", "only V3 is supported");
    }
    let Some(g) = &c.grpc_service else {
        return refuse("grpc_service", "a gRPC service is required");
    };
    let gat = format!("{at}.grpc_service");
    if g.retry_policy.is_some() {
        return Err((
            format!("{gat}.retry_policy"),
            "retry policies are not supported".into(),
        ));
    }
    let Some(TargetSpecifier::EnvoyGrpc(e)) = &g.target_specifier else {
        return Err((gat, "only envoy_grpc targets are supported".into()));
    };
    let Some(collector) = super::tracing::collector(&e.cluster_name) else {
        return Err((
            format!("{gat}.envoy_grpc.cluster_name"),
            format!(
                "{:?} is not an outbound|<port>||<host> cluster",
                e.cluster_name
            ),
        ));
    };
    if e.retry_policy.is_some() {
        return Err((
            format!("{gat}.envoy_grpc.retry_policy"),
            "retry policies are not supported".into(),
        ));
    }
    for (i, h) in g.initial_metadata.iter().enumerate() {
        let key =
            tonic::metadata::MetadataKey::<tonic::metadata::Ascii>::from_bytes(h.key.as_bytes());
        let value =
            tonic::metadata::MetadataValue::<tonic::metadata::Ascii>::try_from(h.value.as_str());
        if key.is_err() || value.is_err() {
            return Err((
                format!("{gat}.initial_metadata[{i}]"),
                format!("{:?} is not an ASCII gRPC metadata entry", h.key),
            ));
        }
    }
    Ok(GrpcLogConfig {
        kind,
        log_name: c.log_name.clone(),
        service: collector.host,
        port: collector.port,
        cluster: Some(collector.cluster),
        authority: e.authority.clone(),
        request_headers: Vec::new(),
        response_headers: Vec::new(),
        filter_state_objects: c.filter_state_objects_to_log.clone(),
        metadata: g
            .initial_metadata
            .iter()
            .map(|h| (h.key.clone(), h.value.clone()))
            .collect(),
        stream_timeout: super::duration(g.timeout.as_ref()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http_config(extra: serde_json::Value) -> Result<GrpcLogConfig, Bad> {
        // istiod's shape (telemetry_logging.go `httpGrpcAccessLogFromTelemetry`).
        let mut json = serde_json::json!({
            "common_config": {
                "log_name": "http_envoy_accesslog",
                "grpc_service": {"envoy_grpc": {
                    "cluster_name": "outbound|9001||als.observability.svc.cluster.local",
                    "authority": "als.observability.svc.cluster.local"}},
                "transport_api_version": "V3",
                "filter_state_objects_to_log": ["upstream_peer", "downstream_peer"]},
            "additional_request_headers_to_log": ["X-Tenant"]});
        for (k, v) in extra.as_object().unwrap() {
            json[k] = v.clone();
        }
        let c: HttpGrpcAccessLogConfig = crate::envoy::from_json(
            "envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
            &json,
        )
        .unwrap();
        http(&c.encode_to_vec(), "access_log[0].typed_config")
    }

    #[test]
    fn istiods_http_logger_becomes_the_settings() {
        let c = http_config(serde_json::json!({})).unwrap();
        assert_eq!(c.kind, GrpcLogKind::Http);
        assert_eq!(c.log_name, "http_envoy_accesslog");
        assert_eq!(c.service, "als.observability.svc.cluster.local");
        assert_eq!(c.port, 9001);
        assert_eq!(c.request_headers, ["x-tenant"]);
        assert_eq!(c.filter_state_objects, ["upstream_peer", "downstream_peer"]);
        assert_eq!(c.stream_timeout, None);
    }

    #[test]
    fn unsupported_fields_are_refused_by_name() {
        let e = http_config(serde_json::json!({"additional_response_trailers_to_log": ["x"]}))
            .unwrap_err();
        assert_eq!(
            e.0,
            "access_log[0].typed_config.additional_response_trailers_to_log"
        );
        // MeshConfig `enableEnvoyAccessLogService` names the bootstrap's static cluster,
        // which istiod never sends (accesslog.go `httpGrpcAccessLog`).
        let e = http_config(serde_json::json!({"common_config": {
            "log_name": "http_envoy_accesslog",
            "grpc_service": {"envoy_grpc": {"cluster_name": "envoy_accesslog_service"}},
            "transport_api_version": "V3"}}))
        .unwrap_err();
        assert_eq!(
            e.0,
            "access_log[0].typed_config.common_config.grpc_service.envoy_grpc.cluster_name"
        );
        let e = http_config(serde_json::json!({"common_config": {
            "log_name": "l",
            "grpc_service": {"envoy_grpc": {"cluster_name": "outbound|1||a"}},
            "buffer_size_bytes": 1024}}))
        .unwrap_err();
        assert!(
            e.0.ends_with("common_config.buffer_flush_interval"),
            "{e:?}"
        );
    }
}
