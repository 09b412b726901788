//! The connection manager settings of a waypoint's `main_internal` HTTP chains that shape
//! requests and connections, as istiod writes them (`buildWaypointInboundHTTPFilters` in
//! `listener_waypoint.go`, `buildHTTPConnectionManager` in `listener_builder.go`,
//! `applyConnectionSettingsToHCM` in `connection_settings.go`):
//!
//! - request-id generation, client certificate forwarding, `use_remote_address: false`,
//!   WebSocket as the one upgrade;
//! - the stream idle timeout (`0s`, none, unless ProxyConfig
//!   `connectionSettings.httpStreamIdleTimeout` sets one);
//! - HTTP/1.1 header names in their original case (`http_protocol_options.header_key_format`);
//! - HTTP/1.0 (`http_protocol_options.accept_http_10`, from the proxy's `HTTP10` metadata or
//!   istiod's `PILOT_HTTP10`; `default_host_for_http_10`, which istiod never writes);
//! - `common_http_protocol_options`: `idle_timeout` (the proxy's `IDLE_TIMEOUT` metadata,
//!   replaced by `connectionSettings.httpIdleTimeout`), `max_connection_duration`
//!   (`httpMaxConnectionDuration`), `max_stream_duration` (`httpMaxStreamDuration`),
//!   `headers_with_underscores_action` (`httpHeadersWithUnderscoresAction`).
//!
//! What takes effect goes into [`RequestHeaders`]; values the waypoint does not implement
//! are refused by field.
//!
//! Accepted without effect: `server_name`/`server_header_transformation` (the waypoint
//! does not write a `server` response header), `stat_prefix`,
//! `set_current_client_cert_details`, and istiod's defaults: `codec_type: AUTO`, an empty
//! `http2_protocol_options`, `append_x_forwarded_port: false`. Every other field is
//! refused by name ([`check_unread`]).

use envoy_types::pb::envoy::config::core::v3::{
    http_protocol_options::HeadersWithUnderscoresAction, Http1ProtocolOptions,
    HttpProtocolOptions as CommonHttpProtocolOptions,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::ForwardClientCertDetails, HttpConnectionManager,
};
use filters::model::{RequestHeaders, UnderscoreHeaders};

use super::Bad;

/// Refuses, by name, the connection manager's fields that neither this module nor the
/// listener translator reads (route configuration, filters, tracing, access logs, path
/// normalization) and that are not accepted without effect.
pub fn check_unread(hcm: &HttpConnectionManager, at: &str) -> Result<(), Bad> {
    let mut rest = HttpConnectionManager {
        route_specifier: None,
        http_filters: Vec::new(),
        tracing: None,
        access_log: Vec::new(),
        normalize_path: None,
        merge_slashes: false,
        path_with_escaped_slashes_action: 0,
        use_remote_address: None,
        xff_num_trusted_hops: 0,
        skip_xff_append: false,
        request_id_extension: None,
        upgrade_configs: Vec::new(),
        forward_client_cert_details: 0,
        set_current_client_cert_details: None,
        generate_request_id: None,
        stream_idle_timeout: None,
        server_name: String::new(),
        server_header_transformation: 0,
        stat_prefix: String::new(),
        ..hcm.clone()
    };
    // AUTO: the waypoint serves HTTP/1.1 and HTTP/2 alike.
    rest.codec_type = 0;
    // Read by `request_headers` (`common_options`), which refuses what it does not read.
    rest.common_http_protocol_options = None;
    if rest.http2_protocol_options == Some(Default::default()) {
        rest.http2_protocol_options = None;
    }
    if let Some(h1) = &mut rest.http_protocol_options {
        // Read by `request_headers` (the preserve_case formatter, HTTP/1.0).
        h1.header_key_format = None;
        h1.accept_http_10 = false;
        h1.default_host_for_http_10 = String::new();
        super::residual::refuse(
            &format!("{at}.http_protocol_options"),
            super::residual::first_set("envoy.config.core.v3.Http1ProtocolOptions", &*h1),
        )?;
        rest.http_protocol_options = None;
    }
    super::residual::refuse(
        at,
        super::residual::first_set(
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            &rest,
        ),
    )
}

/// The request-header settings, after refusing the settings not implemented.
pub fn request_headers(hcm: &HttpConnectionManager, at: &str) -> Result<RequestHeaders, Bad> {
    let bad = |field: &str, reason: String| (format!("{at}.{field}"), reason);
    check_unread(hcm, at)?;
    if hcm.use_remote_address.as_ref().is_some_and(|v| v.value) {
        return Err(bad(
            "use_remote_address",
            "only false is supported: the internal listener's peer is not the client".into(),
        ));
    }
    if hcm.xff_num_trusted_hops != 0 || hcm.skip_xff_append {
        return Err(bad(
            "xff_num_trusted_hops",
            "X-Forwarded-For handling other than istiod's default is not supported".into(),
        ));
    }
    if let Some(ext) = &hcm.request_id_extension {
        let url = ext
            .typed_config
            .as_ref()
            .map(|a| a.type_url.as_str())
            .unwrap_or_default();
        if !url.ends_with("request_id.uuid.v3.UuidRequestIdConfig") {
            return Err(bad(
                "request_id_extension",
                format!("only the UUID request id is supported, got {url:?}"),
            ));
        }
    }
    for (i, u) in hcm.upgrade_configs.iter().enumerate() {
        let kind = u.upgrade_type.to_ascii_lowercase();
        if kind != "websocket" && kind != "connect" {
            return Err(bad(
                &format!("upgrade_configs[{i}].upgrade_type"),
                format!(
                    "{:?}: only websocket upgrades are supported",
                    u.upgrade_type
                ),
            ));
        }
        if !u.filters.is_empty() {
            return Err(bad(
                &format!("upgrade_configs[{i}].filters"),
                "upgrade filter chains are not supported".into(),
            ));
        }
    }
    let sanitize = match ForwardClientCertDetails::try_from(hcm.forward_client_cert_details) {
        Ok(ForwardClientCertDetails::Sanitize | ForwardClientCertDetails::SanitizeSet) => true,
        Ok(
            ForwardClientCertDetails::ForwardOnly
            | ForwardClientCertDetails::AppendForward
            | ForwardClientCertDetails::AlwaysForwardOnly,
        ) => false,
        Err(_) => {
            return Err(bad(
                "forward_client_cert_details",
                format!("unknown value {}", hcm.forward_client_cert_details),
            ))
        }
    };
    let preserve_header_case = match &hcm.http_protocol_options {
        Some(h1) => super::header_case::preserve_case(h1, &format!("{at}.http_protocol_options"))?,
        None => false,
    };
    let (accept_http_10, default_host_for_http_10) = match &hcm.http_protocol_options {
        Some(h1) => http_10(h1, &format!("{at}.http_protocol_options"))?,
        None => (false, None),
    };
    let times = match &hcm.common_http_protocol_options {
        Some(common) => common_options(common, &format!("{at}.common_http_protocol_options"))?,
        None => CommonOptions::default(),
    };
    Ok(RequestHeaders {
        generate_request_id: hcm.generate_request_id.as_ref().is_none_or(|v| v.value),
        sanitize_client_cert: sanitize,
        // `0s` (istiod's default, listener_builder.go / listener_waypoint.go) is none.
        stream_idle_timeout: super::duration(hcm.stream_idle_timeout.as_ref()),
        preserve_header_case,
        accept_http_10,
        default_host_for_http_10,
        idle_timeout: times.idle_timeout,
        max_connection_duration: times.max_connection_duration,
        max_stream_duration: times.max_stream_duration,
        underscore_headers: times.underscore_headers,
    })
}

/// `accept_http_10` and, with it, `default_host_for_http_10` (which Envoy ignores
/// without it); `at` names the `http_protocol_options`.
fn http_10(h1: &Http1ProtocolOptions, at: &str) -> Result<(bool, Option<String>), Bad> {
    let host = &h1.default_host_for_http_10;
    if !host.is_empty() && http::HeaderValue::from_str(host).is_err() {
        return Err((
            format!("{at}.default_host_for_http_10"),
            format!("{host:?} is not a valid Host header value"),
        ));
    }
    let default_host = (h1.accept_http_10 && !host.is_empty()).then(|| host.clone());
    Ok((h1.accept_http_10, default_host))
}

/// The connection manager's `common_http_protocol_options`: `idle_timeout`,
/// `max_connection_duration`, `max_stream_duration` (`0s` is none, as in Envoy) and
/// `headers_with_underscores_action` take effect; every other field is refused by name.
fn common_options(common: &CommonHttpProtocolOptions, at: &str) -> Result<CommonOptions, Bad> {
    let refused = [
        (
            "max_headers_count",
            common.max_headers_count.is_some(),
            "not supported",
        ),
        (
            "max_response_headers_kb",
            common.max_response_headers_kb.is_some(),
            "not supported",
        ),
        (
            "max_requests_per_connection",
            common.max_requests_per_connection.is_some(),
            "not supported on the connection manager",
        ),
    ];
    if let Some((field, _, why)) = refused.iter().find(|(_, set, _)| *set) {
        return Err((format!("{at}.{field}"), (*why).into()));
    }
    let rest = CommonHttpProtocolOptions {
        idle_timeout: None,
        max_connection_duration: None,
        max_stream_duration: None,
        headers_with_underscores_action: 0,
        ..*common
    };
    super::residual::refuse(
        at,
        super::residual::first_set("envoy.config.core.v3.HttpProtocolOptions", &rest),
    )?;
    let underscore_headers =
        match HeadersWithUnderscoresAction::try_from(common.headers_with_underscores_action) {
            Ok(HeadersWithUnderscoresAction::Allow) => UnderscoreHeaders::Allow,
            Ok(HeadersWithUnderscoresAction::RejectRequest) => UnderscoreHeaders::RejectRequest,
            Ok(HeadersWithUnderscoresAction::DropHeader) => UnderscoreHeaders::DropHeader,
            Err(_) => {
                return Err((
                    format!("{at}.headers_with_underscores_action"),
                    format!("unknown value {}", common.headers_with_underscores_action),
                ))
            }
        };
    Ok(CommonOptions {
        underscore_headers,
        idle_timeout: super::duration(common.idle_timeout.as_ref()),
        max_connection_duration: super::duration(common.max_connection_duration.as_ref()),
        max_stream_duration: super::duration(common.max_stream_duration.as_ref()),
    })
}

/// The settings of `common_http_protocol_options` (time limits `None`: unset or `0s`, no
/// limit).
#[derive(Default)]
struct CommonOptions {
    underscore_headers: UnderscoreHeaders,
    idle_timeout: Option<std::time::Duration>,
    max_connection_duration: Option<std::time::Duration>,
    max_stream_duration: Option<std::time::Duration>,
}
