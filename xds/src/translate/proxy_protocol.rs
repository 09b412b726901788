//! DestinationRule `proxyProtocol` on a waypoint's `inbound-vip` cluster: istiod wraps the
//! socket inside `internal_upstream` (raw buffer, or the `UpstreamTlsContext` of
//! DestinationRule `tls`) in a `ProxyProtocolUpstreamTransport` carrying the version
//! (istio `pilot/pkg/networking/core/cluster_waypoint.go`, `buildWaypointInboundVIPCluster`:
//! `if proxyProtocol != nil { transportSocket = &core.TransportSocket{Name:
//! wellknown.TransportSocketPROXY, ... ProxyProtocolUpstreamTransport{Config:
//! &core.ProxyProtocolConfig{Version: ...}, TransportSocket: transportSocket}} }`).

use envoy_types::pb::envoy::config::core::v3::TransportSocket;
use envoy_types::pb::envoy::extensions::transport_sockets::proxy_protocol::v3::ProxyProtocolUpstreamTransport;
use filters::model::ProxyProtocolVersion;
use prost::Message;

/// The version the socket sends and the socket it wraps; `Err` names the field (relative
/// to the PROXY socket's `typed_config`) and why it is refused.
pub(super) fn convert(
    bytes: &[u8],
) -> Result<(ProxyProtocolVersion, Option<TransportSocket>), (String, String)> {
    let socket = ProxyProtocolUpstreamTransport::decode(bytes)
        .map_err(|e| (String::new(), e.to_string()))?;
    let config = socket.config.unwrap_or_default();
    let version = match config.version {
        0 => ProxyProtocolVersion::V1,
        1 => ProxyProtocolVersion::V2,
        v => {
            return Err((
                "config.version".into(),
                format!("unknown PROXY protocol version {v}"),
            ))
        }
    };
    // TLVs are never sent: refuse rather than send a header without them.
    if config.pass_through_tlvs.is_some() {
        return Err((
            "config.pass_through_tlvs".into(),
            "PROXY protocol TLVs are not supported".into(),
        ));
    }
    if !config.added_tlvs.is_empty() {
        return Err((
            "config.added_tlvs".into(),
            "PROXY protocol TLVs are not supported".into(),
        ));
    }
    if socket.tlv_as_pool_key {
        return Err((
            "tlv_as_pool_key".into(),
            "PROXY protocol TLVs are not supported".into(),
        ));
    }
    Ok((version, socket.transport_socket))
}
