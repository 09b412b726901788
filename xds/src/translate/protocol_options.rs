//! A cluster's `typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]`,
//! as istiod writes it (`setUpstreamProtocol`, `setH2Options`, `setUseDownstreamProtocol`
//! and `applyConnectionPool` in `cluster_builder.go` / `cluster_traffic_policy.go`): the
//! HTTP version towards the endpoints (explicit HTTP/1.1, explicit HTTP/2, or the client's),
//! the SNI/SAN settings of TLS origination, and the connection-pool limits (idle timeout,
//! requests and lifetime per connection), and for explicit HTTP/2 the stream limit per
//! connection and the PING keepalive (`max_concurrent_streams`, `connection_keepalive`:
//! DestinationRule `maxConcurrentStreams`, `http2KeepAlive`). Settings the waypoint does not
//! implement (other HTTP/2 settings, HTTP/1.1 settings other than istiod's `preserve_case`
//! header formatter, header limits, upstream filters) are refused by field.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options::{
        explicit_http_config::ProtocolConfig, ExplicitHttpConfig, UpstreamProtocolOptions,
    },
    HttpProtocolOptions,
};
use filters::model::UpstreamProtocol;
use prost::Message;

use super::upstream_tls::AutoSettings;
use super::Bad;

/// The key istiod writes the options under.
pub const KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// What the options say.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProtocolOptions {
    /// The HTTP version upstream; `None` when the cluster does not say.
    pub upstream: Option<UpstreamProtocol>,
    /// The cluster has HTTP/2 options, explicit or for the client's protocol (Envoy's
    /// HTTP/2 cluster feature): a TCP proxy's `tunneling_config` then tunnels in HTTP/2.
    pub http2: bool,
    /// SNI and SAN settings for TLS origination.
    pub auto: AutoSettings,
    /// Idle timeout, requests and lifetime per upstream connection.
    pub limits: filters::model::ConnectionLimits,
}

/// Reads the cluster's HTTP protocol options.
pub fn convert(c: &Cluster) -> Result<ProtocolOptions, Bad> {
    if let Some((other, _)) = c
        .typed_extension_protocol_options
        .iter()
        .find(|(k, _)| *k != KEY)
    {
        return Err((
            format!("typed_extension_protocol_options[{other}]"),
            "only HttpProtocolOptions is supported".into(),
        ));
    }
    let Some(any) = c.typed_extension_protocol_options.get(KEY) else {
        return Ok(ProtocolOptions::default());
    };
    let at = format!("typed_extension_protocol_options[{KEY}]");
    let bad = |field: &str, reason: &str| (format!("{at}.{field}"), reason.to_string());
    let o = HttpProtocolOptions::decode(any.value.as_slice())
        .map_err(|e| (at.clone(), e.to_string()))?;
    let mut limits = filters::model::ConnectionLimits::default();
    if let Some(common) = &o.common_http_protocol_options {
        // DestinationRule connectionPool idleTimeout, maxRequestsPerConnection and
        // maxConnectionDuration take effect; the rest is refused by field.
        let rest = envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions {
            idle_timeout: None,
            max_connection_duration: None,
            max_requests_per_connection: None,
            ..*common
        };
        if rest != Default::default() {
            return Err(bad(
                "common_http_protocol_options",
                "only idle_timeout, max_requests_per_connection and max_connection_duration are supported",
            ));
        }
        let duration =
            |d: &Option<envoy_types::pb::google::protobuf::Duration>| super::duration(d.as_ref());
        limits = filters::model::ConnectionLimits {
            idle_timeout: duration(&common.idle_timeout),
            max_requests: common
                .max_requests_per_connection
                .as_ref()
                .map(|v| v.value)
                .filter(|v| *v > 0),
            max_duration: duration(&common.max_connection_duration),
            ..Default::default()
        };
    }
    let unsupported = [
        ("http_filters", !o.http_filters.is_empty()),
        (
            "header_validation_config",
            o.header_validation_config.is_some(),
        ),
        ("outlier_detection", o.outlier_detection.is_some()),
        (
            "request_mirror_policies",
            !o.request_mirror_policies.is_empty(),
        ),
    ];
    if let Some((field, _)) = unsupported.iter().find(|(_, on)| *on) {
        return Err(bad(field, "not supported"));
    }
    let mut auto = AutoSettings::default();
    if let Some(u) = &o.upstream_http_protocol_options {
        if !u.override_auto_sni_header.is_empty() {
            return Err(bad(
                "upstream_http_protocol_options.override_auto_sni_header",
                "not supported",
            ));
        }
        auto = AutoSettings {
            auto_sni: u.auto_sni,
            auto_san_validation: u.auto_san_validation,
        };
    }
    let defaults = |set: bool, field: &str| {
        if set {
            Err(bad(
                field,
                "only default settings are supported (besides HTTP/2 max_concurrent_streams and connection_keepalive)",
            ))
        } else {
            Ok(())
        }
    };
    let upstream = match &o.upstream_protocol_options {
        None => None,
        Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config,
        })) => match protocol_config {
            None => Some(UpstreamProtocol::Http1),
            Some(ProtocolConfig::HttpProtocolOptions(h1)) => {
                let field = "explicit_http_config.http_protocol_options";
                limits.preserve_header_case = h1_options(h1, &at, field)?;
                Some(UpstreamProtocol::Http1)
            }
            Some(ProtocolConfig::Http2ProtocolOptions(h2)) => {
                let field = "explicit_http_config.http2_protocol_options";
                let rest = envoy_types::pb::envoy::config::core::v3::Http2ProtocolOptions {
                    max_concurrent_streams: None,
                    connection_keepalive: None,
                    ..h2.clone()
                };
                defaults(rest != Default::default(), field)?;
                let (streams, keepalive) =
                    h2_settings(h2).map_err(|(f, reason)| bad(&format!("{field}.{f}"), &reason))?;
                limits.max_concurrent_streams = streams;
                limits.h2_keepalive = keepalive;
                Some(UpstreamProtocol::Http2)
            }
            Some(ProtocolConfig::Http3ProtocolOptions(_)) => {
                return Err(bad(
                    "explicit_http_config.http3_protocol_options",
                    "HTTP/3 upstream is not supported",
                ))
            }
        },
        Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(d)) => {
            let field = "use_downstream_protocol_config";
            defaults(
                d.http2_protocol_options
                    .as_ref()
                    .is_some_and(|h| *h != Default::default()),
                field,
            )?;
            if let Some(h1) = &d.http_protocol_options {
                limits.preserve_header_case = h1_options(
                    h1,
                    &at,
                    "use_downstream_protocol_config.http_protocol_options",
                )?;
            }
            if d.http3_protocol_options.is_some() {
                return Err(bad(field, "HTTP/3 upstream is not supported"));
            }
            Some(UpstreamProtocol::Downstream)
        }
        Some(UpstreamProtocolOptions::AutoConfig(_)) => {
            return Err(bad(
                "auto_config",
                "ALPN-negotiated upstream protocol is not supported",
            ))
        }
    };
    let http2 = match &o.upstream_protocol_options {
        Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(_)),
        })) => true,
        Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(d)) => {
            d.http2_protocol_options.is_some()
        }
        _ => false,
    };
    Ok(ProtocolOptions {
        upstream,
        http2,
        auto,
        limits,
    })
}

/// Envoy's default and largest `max_concurrent_streams`: no limit of its own.
const STREAMS_UNLIMITED: u32 = 2_147_483_647;

/// The stream limit per connection and the PING keepalive of explicit HTTP/2 options; the
/// error names the field under `http2_protocol_options`.
fn h2_settings(
    h2: &envoy_types::pb::envoy::config::core::v3::Http2ProtocolOptions,
) -> Result<(Option<u32>, Option<filters::model::H2Keepalive>), Bad> {
    let streams = match h2.max_concurrent_streams.as_ref().map(|v| v.value) {
        None => None,
        Some(0) => return Err(("max_concurrent_streams".into(), "must be at least 1".into())),
        Some(n) if n >= STREAMS_UNLIMITED => None,
        Some(n) => Some(n),
    };
    let Some(k) = &h2.connection_keepalive else {
        return Ok((streams, None));
    };
    let field = |f: &str| format!("connection_keepalive.{f}");
    if k.interval_jitter.is_some() {
        // Envoy jitters by 15% unless told otherwise; istiod never sets it.
        return Err((field("interval_jitter"), "not supported".into()));
    }
    if k.connection_idle_interval.is_some() {
        return Err((field("connection_idle_interval"), "not supported".into()));
    }
    // Envoy requires a timeout of at least 1 ms, and sends no PINGs without an interval.
    let timeout = super::duration(k.timeout.as_ref())
        .filter(|t| *t >= std::time::Duration::from_millis(1))
        .ok_or_else(|| (field("timeout"), "required, at least 1ms".to_string()))?;
    let keepalive = super::duration(k.interval.as_ref())
        .filter(|i| !i.is_zero())
        .map(|interval| filters::model::H2Keepalive { interval, timeout });
    Ok((streams, keepalive))
}

/// HTTP/1.1 options: whether header case is preserved (istiod's `preserve_case`
/// formatter); every other setting must be Envoy's default.
fn h1_options(
    h1: &envoy_types::pb::envoy::config::core::v3::Http1ProtocolOptions,
    at: &str,
    field: &str,
) -> Result<bool, Bad> {
    let rest = envoy_types::pb::envoy::config::core::v3::Http1ProtocolOptions {
        header_key_format: None,
        ..h1.clone()
    };
    if rest != Default::default() {
        return Err((
            format!("{at}.{field}"),
            "only default settings are supported (besides the preserve_case header formatter)"
                .into(),
        ));
    }
    super::header_case::preserve_case(h1, &format!("{at}.{field}"))
}
