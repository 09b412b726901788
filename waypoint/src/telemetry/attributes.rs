//! The attributes CEL expressions read (access log filters, metric dimensions): one
//! finished request (or a TCP connection, which has no request), its tunnel, and the
//! labels of both ends.

use std::borrow::Cow;
use std::net::SocketAddr;

use filters::access_log::HttpRecord;
use filters::cel::{Activation, Attribute, MapAttribute, Peer, PeerField, Value};
use filters::model::{TunnelInfo, Workload};

use super::labels::{PeerLabels, ServiceLabels};

/// The facts of one request or connection.
pub struct Facts<'a> {
    /// The finished request; `None` for a TCP connection.
    pub record: Option<&'a HttpRecord>,
    /// The tunnel it came through.
    pub tunnel: &'a TunnelInfo,
    /// The source's labels.
    pub source: &'a PeerLabels,
    /// The destination Service's and pod's labels.
    pub destination: &'a (ServiceLabels, PeerLabels),
    /// The source pod, when the configuration knows it.
    pub source_pod: Option<&'a Workload>,
    /// The destination pod.
    pub destination_pod: Option<&'a Workload>,
    /// The upstream address.
    pub upstream: Option<SocketAddr>,
}

fn text(s: &str) -> Option<Value<'_>> {
    Some(Value::Str(Cow::Borrowed(s)))
}

fn owned<'a>(s: String) -> Option<Value<'a>> {
    Some(Value::Str(Cow::Owned(s)))
}

fn header<'a>(map: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    map.get(name).and_then(|v| v.to_str().ok())
}

impl Facts<'_> {
    fn peer(&self, peer: Peer) -> (&PeerLabels, Option<&Workload>) {
        match peer {
            Peer::Upstream => (&self.destination.1, self.destination_pod),
            Peer::Downstream => (self.source, self.source_pod),
        }
    }
}

impl Activation for Facts<'_> {
    fn attribute(&self, attribute: Attribute) -> Option<Value<'_>> {
        use Attribute as A;
        let r = self.record;
        match attribute {
            A::RequestPath => text(&r?.path),
            A::RequestUrlPath => {
                let p = &r?.path;
                text(p.split_once('?').map_or(p.as_str(), |(p, _)| p))
            }
            A::RequestQuery => text(r?.path.split_once('?').map_or("", |(_, q)| q)),
            A::RequestHost => text(header(&r?.request_headers, "host")?),
            A::RequestScheme => r.and_then(|_| text("http")),
            A::RequestMethod => text(&r?.method),
            A::RequestId => text(header(&r?.request_headers, "x-request-id")?),
            A::RequestReferer => text(header(&r?.request_headers, "referer")?),
            A::RequestUserAgent => text(header(&r?.request_headers, "user-agent")?),
            A::RequestProtocol => text(r?.protocol),
            A::RequestSize => Some(Value::Int(r?.bytes_received as i64)),
            A::RequestTotalSize => Some(Value::Int(r?.request_total as i64)),
            A::ResponseCode => Some(Value::Int(r?.code.into())),
            A::ResponseCodeDetails => text(&r?.details),
            A::ResponseGrpcStatus => Some(Value::Int(r?.grpc_status?.into())),
            A::ResponseSize => Some(Value::Int(r?.bytes_sent as i64)),
            A::ResponseTotalSize => Some(Value::Int(r?.response_total as i64)),
            A::SourceAddress => owned(self.tunnel.source_addr()?.to_string()),
            A::SourcePort => Some(Value::Int(self.tunnel.source_addr()?.port().into())),
            A::DestinationAddress => owned(self.tunnel.authority.to_string()),
            A::DestinationPort => Some(Value::Int(self.tunnel.authority.port().into())),
            A::UpstreamAddress => owned(self.upstream?.to_string()),
            A::UpstreamPort => Some(Value::Int(self.upstream?.port().into())),
            // Every tunnel is mutual TLS (HBONE).
            A::ConnectionMtls => Some(Value::Bool(true)),
            A::XdsClusterName => text(r?.upstream_cluster.as_deref()?),
            A::XdsRouteName => text(r?.route_name.as_deref()?),
            A::Peer(p, field) => {
                let (l, pod) = self.peer(p);
                let v = match field {
                    PeerField::Name => pod.map_or(l.workload.as_str(), |w| &w.name.name),
                    PeerField::Namespace => &l.namespace,
                    PeerField::Workload => &l.workload,
                    PeerField::Cluster => &l.cluster,
                    PeerField::Service => &l.canonical_service,
                    PeerField::Revision => &l.canonical_revision,
                    PeerField::App => &l.app,
                    PeerField::Version => &l.version,
                };
                text(v)
            }
        }
    }

    fn entry(&self, map: MapAttribute, key: &str) -> Option<&str> {
        match map {
            MapAttribute::RequestHeaders => {
                let r = self.record?;
                match key {
                    ":method" => Some(&r.method),
                    ":path" => Some(&r.path),
                    ":authority" => header(&r.request_headers, "host"),
                    k => header(&r.request_headers, k),
                }
            }
            MapAttribute::ResponseHeaders => match key {
                ":status" => None,
                k => header(&self.record?.response_headers, k),
            },
            MapAttribute::PeerLabels(p) => {
                let (_, pod) = self.peer(p);
                pod?.labels.get(key).map(String::as_str)
            }
        }
    }
}
