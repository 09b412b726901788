//! The request attributes policies are evaluated against.

use std::borrow::Cow;
use std::net::IpAddr;

use http::HeaderMap;

/// What a validated JWT contributed (from RequestAuthentication).
#[derive(Debug, Clone, Default)]
pub struct JwtAuth {
    /// `iss/sub`.
    pub principal: String,
    /// `aud` values.
    pub audiences: Vec<String>,
    /// `azp`.
    pub presenter: Option<String>,
    /// All claims.
    pub claims: serde_json::Value,
}

/// HTTP attributes; absent for TCP.
#[derive(Debug, Clone, Copy)]
pub struct HttpAttributes<'a> {
    /// Method.
    pub method: &'a str,
    /// Host (authority) as sent, port included if sent.
    pub host: &'a str,
    /// Normalized path without query.
    pub path: &'a str,
    /// The query string (after `?`), if the request had one; Envoy RBAC's `:path` header
    /// is `path?query`.
    pub query: Option<&'a str>,
    /// The path and query as one string (`path?query`), when it is at hand ready-made (the
    /// request's URI, once normalized); RBAC builds it otherwise.
    pub path_and_query: Option<&'a str>,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The validated JWT, if any.
    pub auth: Option<&'a JwtAuth>,
}

/// Everything a policy can ask about a request or connection.
#[derive(Debug, Clone, Default)]
pub struct Attributes<'a> {
    /// Peer principal without `spiffe://`.
    pub principal: Option<Cow<'a, str>>,
    /// The same principal as a URI (`spiffe://...`), when it is at hand ready-made (a
    /// tunnel keeps it); RBAC, which matches the URI, builds it otherwise.
    pub principal_uri: Option<Cow<'a, str>>,
    /// Peer namespace.
    pub namespace: Option<Cow<'a, str>>,
    /// Peer service account.
    pub service_account: Option<Cow<'a, str>>,
    /// Original source IP.
    pub source_ip: Option<IpAddr>,
    /// Remote (client) IP.
    pub remote_ip: Option<IpAddr>,
    /// Destination (VIP or pod) IP.
    pub destination_ip: Option<IpAddr>,
    /// Destination port.
    pub destination_port: Option<u16>,
    /// TLS SNI of the connection, if any.
    pub sni: Option<Cow<'a, str>>,
    /// HTTP attributes, `None` on TCP.
    pub http: Option<HttpAttributes<'a>>,
}

impl<'a> Attributes<'a> {
    /// The connection-level attributes of a tunnel (everything but HTTP), borrowed from it.
    pub fn of_tunnel(t: &'a crate::model::TunnelInfo) -> Attributes<'a> {
        Attributes {
            principal: Some(Cow::Borrowed(t.principal())),
            principal_uri: Some(Cow::Borrowed(t.principal_uri())),
            namespace: Some(Cow::Borrowed(&t.peer.namespace)),
            service_account: Some(Cow::Borrowed(&t.peer.service_account)),
            source_ip: t.source_ip,
            remote_ip: t.source_ip,
            destination_ip: Some(t.authority.ip()),
            destination_port: Some(t.authority.port()),
            sni: None,
            http: None,
        }
    }
}
