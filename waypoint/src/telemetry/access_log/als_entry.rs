//! The entries of an access log service stream (`envoy.data.accesslog.v3`), built from a
//! finished request or TCP tunnel: the common properties (addresses, start time, duration,
//! upstream host and cluster, response flags, route, the peers' workload metadata as the
//! `downstream_peer` / `upstream_peer` filter state objects), then, for HTTP, the request
//! (method, scheme, authority, path, user agent, referer, forwarded-for, request id,
//! original path, header and body sizes, the configured extra headers) and the response
//! (code, details, header and body sizes, the configured extra headers). TLS properties
//! stay empty: requests reach the connection manager over the HBONE tunnel's internal
//! listener, which has no TLS of its own, as in Envoy's waypoint.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, RequestMethod, SocketAddress};
use envoy_types::pb::envoy::data::accesslog::v3::http_access_log_entry::HttpVersion;
use envoy_types::pb::envoy::data::accesslog::v3::response_flags::unauthorized::Reason;
use envoy_types::pb::envoy::data::accesslog::v3::response_flags::Unauthorized;
use envoy_types::pb::envoy::data::accesslog::v3::{
    AccessLogCommon, AccessLogType, ConnectionProperties, HttpAccessLogEntry,
    HttpRequestProperties, HttpResponseProperties, ResponseFlags, TcpAccessLogEntry,
};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{self as pb, Any, Struct, UInt32Value, Value};
use filters::access_log::HttpRecord;
use filters::cel::{Activation, Attribute, Peer, PeerField, Value as CelValue};
use filters::model::telemetry::GrpcLogConfig;
use prost::Message;

/// The HTTP entry of `record`.
pub fn http(
    config: &GrpcLogConfig,
    record: &HttpRecord,
    facts: &dyn Activation,
) -> HttpAccessLogEntry {
    let header = |name: &str| {
        record
            .request_headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default()
    };
    let pick = |map: &http::HeaderMap, names: &[String]| -> HashMap<String, String> {
        names
            .iter()
            .filter_map(|n| {
                map.get(n.as_str()).map(|v| {
                    (
                        n.clone(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
            })
            .collect()
    };
    let request_headers_bytes = record.request_total.saturating_sub(record.bytes_received);
    let response_headers_bytes = record.response_total.saturating_sub(record.bytes_sent);
    HttpAccessLogEntry {
        common_properties: Some(common(config, record, facts)),
        protocol_version: match record.protocol {
            "HTTP/2" => HttpVersion::Http2,
            "HTTP/1.0" => HttpVersion::Http10,
            "" => HttpVersion::ProtocolUnspecified,
            _ => HttpVersion::Http11,
        } as i32,
        request: (!record.method.is_empty()).then(|| HttpRequestProperties {
            request_method: method(&record.method) as i32,
            scheme: "http".into(),
            authority: header("host"),
            path: record.path.clone(),
            user_agent: header("user-agent"),
            referer: header("referer"),
            forwarded_for: header("x-forwarded-for"),
            request_id: header("x-request-id"),
            original_path: header("x-envoy-original-path"),
            request_headers_bytes,
            request_body_bytes: record.bytes_received,
            request_headers: pick(&record.request_headers, &config.request_headers),
            ..Default::default()
        }),
        response: (record.code != 0).then(|| HttpResponseProperties {
            response_code: Some(UInt32Value {
                value: record.code.into(),
            }),
            response_headers_bytes,
            response_body_bytes: record.bytes_sent,
            response_headers: pick(&record.response_headers, &config.response_headers),
            response_code_details: record.details.clone(),
            ..Default::default()
        }),
    }
}

/// The TCP entry of `record` (a tunnel, or a request logged by a TCP logger).
pub fn tcp(
    config: &GrpcLogConfig,
    record: &HttpRecord,
    facts: &dyn Activation,
) -> TcpAccessLogEntry {
    TcpAccessLogEntry {
        common_properties: Some(common(config, record, facts)),
        connection_properties: Some(ConnectionProperties {
            received_bytes: record.request_total,
            sent_bytes: record.response_total,
        }),
    }
}

fn common(config: &GrpcLogConfig, record: &HttpRecord, facts: &dyn Activation) -> AccessLogCommon {
    let tcp = record.method.is_empty();
    let mut filter_state_objects = HashMap::new();
    for name in &config.filter_state_objects {
        let peer = match name.as_str() {
            "downstream_peer" => peer(facts, Peer::Downstream),
            "upstream_peer" => peer(facts, Peer::Upstream),
            // A waypoint has no other filter state; Envoy skips absent objects.
            _ => None,
        };
        if let Some(p) = peer {
            filter_state_objects.insert(name.clone(), p);
        }
    }
    AccessLogCommon {
        sample_rate: 1.0,
        downstream_remote_address: address(&record.downstream_remote_address),
        downstream_local_address: address(&record.downstream_local_address),
        start_time: Some(timestamp(record.start)),
        duration: Some(duration(record.duration)),
        time_to_last_downstream_tx_byte: (!tcp).then(|| duration(record.duration)),
        time_to_first_upstream_rx_byte: record.upstream_service_time.map(duration),
        upstream_remote_address: record.upstream_host.as_deref().and_then(address),
        upstream_cluster: record.upstream_cluster.clone().unwrap_or_default(),
        response_flags: Some(response_flags(record.flags)),
        upstream_transport_failure_reason: record.upstream_failure.clone().unwrap_or_default(),
        route_name: record.route_name.clone().unwrap_or_default(),
        filter_state_objects,
        access_log_type: if tcp {
            AccessLogType::TcpConnectionEnd
        } else {
            AccessLogType::DownstreamEnd
        } as i32,
        ..Default::default()
    }
}

/// A peer's workload metadata as Istio's peer metadata filter serializes its filter
/// state object: a `google.protobuf.Struct` of strings (`name`, `workload`, `namespace`,
/// `cluster`, `service`, `revision`, `app`, `version`), empty and unknown values left out.
/// `None` when nothing is known of the peer.
fn peer(facts: &dyn Activation, which: Peer) -> Option<Any> {
    let fields: Vec<(String, Value)> = [
        ("name", PeerField::Name),
        ("workload", PeerField::Workload),
        ("namespace", PeerField::Namespace),
        ("cluster", PeerField::Cluster),
        ("service", PeerField::Service),
        ("revision", PeerField::Revision),
        ("app", PeerField::App),
        ("version", PeerField::Version),
    ]
    .into_iter()
    .filter_map(|(k, f)| match facts.attribute(Attribute::Peer(which, f))? {
        CelValue::Str(v) if !v.is_empty() && v != "unknown" => Some((
            k.to_string(),
            Value {
                kind: Some(Kind::StringValue(v.into_owned())),
            },
        )),
        _ => None,
    })
    .collect();
    if fields.is_empty() {
        return None;
    }
    Some(Any {
        type_url: "type.googleapis.com/google.protobuf.Struct".into(),
        value: Struct {
            fields: fields.into_iter().collect(),
        }
        .encode_to_vec(),
    })
}

fn address(s: &str) -> Option<Address> {
    let a: SocketAddr = s.parse().ok()?;
    Some(Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: a.ip().to_string(),
            port_specifier: Some(PortSpecifier::PortValue(a.port().into())),
            ..Default::default()
        })),
    })
}

fn timestamp(t: SystemTime) -> pb::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    pb::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn duration(d: Duration) -> pb::Duration {
    pb::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn method(m: &str) -> RequestMethod {
    match m {
        "GET" => RequestMethod::Get,
        "HEAD" => RequestMethod::Head,
        "POST" => RequestMethod::Post,
        "PUT" => RequestMethod::Put,
        "DELETE" => RequestMethod::Delete,
        "CONNECT" => RequestMethod::Connect,
        "OPTIONS" => RequestMethod::Options,
        "TRACE" => RequestMethod::Trace,
        "PATCH" => RequestMethod::Patch,
        _ => RequestMethod::MethodUnspecified,
    }
}

/// Envoy's response flags (`UF,URX`, `-` for none) as the entry's booleans.
pub fn response_flags(flags: &str) -> ResponseFlags {
    let mut f = ResponseFlags::default();
    for flag in flags.split(',') {
        match flag {
            "LH" => f.failed_local_healthcheck = true,
            "UH" => f.no_healthy_upstream = true,
            "UT" => f.upstream_request_timeout = true,
            "LR" => f.local_reset = true,
            "UR" => f.upstream_remote_reset = true,
            "UF" => f.upstream_connection_failure = true,
            "UC" => f.upstream_connection_termination = true,
            "UO" => f.upstream_overflow = true,
            "NR" => f.no_route_found = true,
            "DI" => f.delay_injected = true,
            "FI" => f.fault_injected = true,
            "RL" => f.rate_limited = true,
            "UAEX" => {
                f.unauthorized_details = Some(Unauthorized {
                    reason: Reason::ExternalService as i32,
                })
            }
            "RLSE" => f.rate_limit_service_error = true,
            "DC" => f.downstream_connection_termination = true,
            "URX" => f.upstream_retry_limit_exceeded = true,
            "SI" => f.stream_idle_timeout = true,
            "IH" => f.invalid_envoy_request_headers = true,
            "DPE" => f.downstream_protocol_error = true,
            "UMSDR" => f.upstream_max_stream_duration_reached = true,
            "RFCF" => f.response_from_cache_filter = true,
            "NFCF" => f.no_filter_config_found = true,
            "DT" => f.duration_timeout = true,
            "UPE" => f.upstream_protocol_error = true,
            "NC" => f.no_cluster_found = true,
            "OM" => f.overload_manager = true,
            "DF" => f.dns_resolution_failure = true,
            "DR" => f.downstream_remote_reset = true,
            _ => {}
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_map_to_their_booleans() {
        let f = response_flags("UF,URX");
        assert!(f.upstream_connection_failure && f.upstream_retry_limit_exceeded);
        assert!(!f.no_route_found);
        assert_eq!(response_flags("-"), ResponseFlags::default());
        assert_eq!(
            response_flags("UAEX").unauthorized_details.unwrap().reason,
            Reason::ExternalService as i32
        );
    }
}
