//! The access logs istiod puts on the waypoint's built-in listeners (`accesslog.go`):
//! connection-level events rather than requests, each written through the configured
//! log's own filter.
//!
//! - `connect_terminate` (its connection manager's log; istiod filters on status >= 400): a
//!   request the HBONE listener refuses (not CONNECT, extended CONNECT, an authority that
//!   is not `ip:port`), logged as the request with the status it got.
//! - `main_internal` (the listener's log; istiod filters on `NR`): a CONNECT to an address
//!   no filter chain serves (no Service VIP port, no served pod), flag `NR`, details
//!   `filter_chain_not_found`, as Envoy logs a connection without a matching chain. Only
//!   here: in Envoy the CONNECT itself succeeds before the internal listener finds no
//!   chain, so `connect_terminate` does not log it.
//! - `connect_originate` (its TCP proxy's log; istiod filters on `UF`): an HBONE tunnel
//!   towards a pod that could not be opened (connect, TLS, HTTP/2 or CONNECT failed),
//!   flag `UF`, with the reason as `%UPSTREAM_TRANSPORT_FAILURE_REASON%`, once per
//!   attempt.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use filters::access_log::HttpRecord;
use filters::cel::{Activation, Attribute, MapAttribute, Value};
use filters::model::telemetry::{AccessLog as LogConfig, TelemetryConfig};
use filters::Snapshot;

use crate::state::Proxy;

/// A CEL view of a connection event: the record and the connection's addresses; no peer.
struct EventFacts<'a> {
    record: &'a HttpRecord,
    source: Option<SocketAddr>,
    destination: Option<SocketAddr>,
    upstream: Option<SocketAddr>,
}

/// A non-empty string attribute.
fn text(s: &str) -> Option<Value<'_>> {
    (!s.is_empty()).then_some(Value::Str(Cow::Borrowed(s)))
}

impl Activation for EventFacts<'_> {
    fn attribute(&self, attribute: Attribute) -> Option<Value<'_>> {
        use Attribute as A;
        let r = self.record;
        match attribute {
            A::RequestPath | A::RequestUrlPath => text(&r.path),
            A::RequestMethod => text(&r.method),
            A::RequestHost => text(r.request_headers.get("host")?.to_str().ok()?),
            A::RequestProtocol => text(r.protocol),
            A::ResponseCode => Some(Value::Int(r.code.into())),
            A::ResponseCodeDetails => text(&r.details),
            A::SourceAddress => Some(Value::Str(Cow::Owned(self.source?.to_string()))),
            A::SourcePort => Some(Value::Int(self.source?.port().into())),
            A::DestinationAddress => Some(Value::Str(Cow::Owned(self.destination?.to_string()))),
            A::DestinationPort => Some(Value::Int(self.destination?.port().into())),
            A::UpstreamAddress => Some(Value::Str(Cow::Owned(self.upstream?.to_string()))),
            A::UpstreamPort => Some(Value::Int(self.upstream?.port().into())),
            A::ConnectionMtls => Some(Value::Bool(true)),
            A::XdsClusterName => text(r.upstream_cluster.as_deref()?),
            _ => None,
        }
    }

    fn entry(&self, map: MapAttribute, key: &str) -> Option<&str> {
        match map {
            MapAttribute::RequestHeaders => match key {
                ":method" => (!self.record.method.is_empty()).then_some(&self.record.method),
                ":path" => (!self.record.path.is_empty()).then_some(&self.record.path),
                ":authority" => self.record.request_headers.get("host")?.to_str().ok(),
                k => self.record.request_headers.get(k)?.to_str().ok(),
            },
            MapAttribute::ResponseHeaders | MapAttribute::PeerLabels(_) => None,
        }
    }
}

/// A record with nothing but the event's facts.
fn record(
    flags: &'static str,
    details: &str,
    local: String,
    remote: Option<SocketAddr>,
) -> HttpRecord {
    HttpRecord {
        start: SystemTime::now(),
        method: String::new(),
        path: String::new(),
        protocol: "",
        request_headers: Default::default(),
        response_headers: Default::default(),
        code: 0,
        flags,
        details: details.to_string(),
        grpc_status: None,
        bytes_received: 0,
        request_total: 0,
        response_total: 0,
        bytes_sent: 0,
        duration: Duration::ZERO,
        upstream_service_time: None,
        upstream_host: None,
        upstream_cluster: None,
        downstream_local_address: local,
        downstream_remote_address: remote.map_or_else(|| "-".into(), |a| a.to_string()),
        route_name: None,
        upstream_failure: None,
    }
}

/// Which built-in listener's logs.
type Pick = fn(&TelemetryConfig) -> &[LogConfig];

/// Writes the event `facts` describes to the logs `pick` chooses, if there are any.
fn write(proxy: &Proxy, snapshot: &Snapshot, pick: Pick, facts: &EventFacts<'_>) {
    let logs = pick(snapshot.telemetry());
    proxy
        .telemetry
        .access_log
        .log(snapshot, logs, facts.record, facts);
}

/// A request refused by the HBONE listener (`connect_terminate`).
pub struct Refused<'a> {
    /// The request.
    pub request: &'a http::Request<h2::RecvStream>,
    /// The status it got.
    pub status: http::StatusCode,
    /// Why (`%RESPONSE_CODE_DETAILS%`).
    pub details: &'a str,
    /// The HBONE peer.
    pub peer: Option<SocketAddr>,
    /// The listener's address on this connection.
    pub local: Option<SocketAddr>,
    /// When the request arrived.
    pub start: SystemTime,
    /// How long refusing it took.
    pub duration: Duration,
}

/// Logs a refused request to `connect_terminate`'s logs.
pub fn connect_refused(proxy: &Proxy, refused: Refused<'_>) {
    let snapshot = proxy.config.current();
    let pick: Pick = |t| &t.listener_logs.connect_terminate;
    if pick(snapshot.telemetry()).is_empty() {
        return;
    }
    let req = refused.request;
    let local = refused
        .local
        .map_or_else(|| proxy.options.hbone_addr.to_string(), |a| a.to_string());
    let mut r = record("-", refused.details, local, refused.peer);
    r.start = refused.start;
    r.duration = refused.duration;
    r.method = req.method().as_str().to_string();
    r.path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    r.protocol = "HTTP/2";
    r.code = refused.status.as_u16();
    r.request_headers = req.headers().clone();
    if let Some(v) = req
        .uri()
        .authority()
        .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
    {
        r.request_headers.insert(http::header::HOST, v);
    }
    let facts = EventFacts {
        record: &r,
        source: refused.peer,
        destination: refused.local,
        upstream: None,
    };
    write(proxy, &snapshot, pick, &facts);
}

/// Logs a CONNECT to `authority`, which no filter chain serves, to `main_internal`'s
/// listener logs; `source` is the original source.
pub fn no_chain(proxy: &Proxy, authority: SocketAddr, source: Option<SocketAddr>) {
    let snapshot = proxy.config.current();
    let pick: Pick = |t| &t.listener_logs.no_chain;
    if pick(snapshot.telemetry()).is_empty() {
        return;
    }
    let r = record(
        "NR",
        "filter_chain_not_found",
        authority.to_string(),
        source,
    );
    let facts = EventFacts {
        record: &r,
        source,
        destination: Some(authority),
        upstream: None,
    };
    write(proxy, &snapshot, pick, &facts);
}

/// Logs an HBONE tunnel to `target` through `hbone` (the pod's ztunnel) that could not be
/// opened, for `reason`, to `connect_originate`'s logs; the attempt began at `start`.
pub fn originate_failed(
    proxy: &Proxy,
    target: SocketAddr,
    hbone: SocketAddr,
    reason: &str,
    start: (SystemTime, Instant),
) {
    let snapshot = proxy.config.current();
    let pick: Pick = |t| &t.listener_logs.connect_originate;
    if pick(snapshot.telemetry()).is_empty() {
        return;
    }
    let mut r = record("UF", "", target.to_string(), None);
    r.start = start.0;
    r.duration = start.1.elapsed();
    r.upstream_host = Some(hbone.to_string());
    r.upstream_cluster = Some("connect_originate".into());
    r.upstream_failure = Some(reason.to_string());
    let facts = EventFacts {
        record: &r,
        source: None,
        destination: Some(target),
        upstream: Some(hbone),
    };
    write(proxy, &snapshot, pick, &facts);
}
