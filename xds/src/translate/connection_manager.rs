//! The connection manager settings of a waypoint's `main_internal` HTTP chains that shape
//! requests and connections, as istiod writes them (`buildWaypointInboundHTTPFilters` in
//! `listener_waypoint.go`, `buildHTTPConnectionManager` in `listener_builder.go`):
//! request-id generation, client certificate forwarding, `use_remote_address: false`,
//! WebSocket as the one upgrade, the stream idle timeout (`0s`, none, unless ProxyConfig
//! `connectionSettings.httpStreamIdleTimeout` sets one: `applyConnectionSettingsToHCM` in
//! `connection_settings.go`), HTTP/1.1 header names in their original case
//! (`http_protocol_options.header_key_format`). What takes effect goes into
//! [`RequestHeaders`]; values the waypoint does not implement are refused by field.
//!
//! Accepted without effect: `server_name`/`server_header_transformation` (the waypoint
//! does not write a `server` response header), `stat_prefix`, `http2_protocol_options`
//! and the rest of `http_protocol_options` with istiod's values.

use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::ForwardClientCertDetails, HttpConnectionManager,
};
use filters::model::RequestHeaders;

use super::Bad;

/// The request-header settings, after refusing the settings not implemented.
pub fn request_headers(hcm: &HttpConnectionManager, at: &str) -> Result<RequestHeaders, Bad> {
    let bad = |field: &str, reason: String| (format!("{at}.{field}"), reason);
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
    Ok(RequestHeaders {
        generate_request_id: hcm.generate_request_id.as_ref().is_none_or(|v| v.value),
        sanitize_client_cert: sanitize,
        // `0s` (istiod's default, listener_builder.go / listener_waypoint.go) is none.
        stream_idle_timeout: super::duration(hcm.stream_idle_timeout.as_ref()),
        preserve_header_case,
    })
}
