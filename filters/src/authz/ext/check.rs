//! What a check tells the authorization server: the attributes of Envoy's
//! `AttributeContext`, independent of the transport.

use std::net::SocketAddr;

use bytes::Bytes;
use http::request::Parts;
use http::Version;

use crate::model::RequestContext;

/// One end of the connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    /// Its address (for the source: the original client IP; the port when known).
    pub address: Option<SocketAddr>,
    /// Its SPIFFE identity, `spiffe://td/ns/x/sa/y` (the source: the HBONE peer).
    pub principal: Option<String>,
}

/// `AttributeContext.Request.HttpRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpRequestAttributes {
    /// `x-request-id` (generated when the client sent none).
    pub id: String,
    /// Method.
    pub method: String,
    /// Path with query, as it goes upstream (normalized).
    pub path: String,
    /// Host (authority).
    pub host: String,
    /// `http` (the tunnel is plaintext inside HBONE).
    pub scheme: String,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: String,
    /// Headers, names lower-case, repeated values joined with `,`, in request order.
    pub headers: Vec<(String, String)>,
    /// `content-length`, or -1 when unknown.
    pub size: i64,
    /// The buffered body (or its first bytes), when the provider asks for it.
    pub body: Option<Bytes>,
    /// Whether `body` is only the start of the body.
    pub partial_body: bool,
}

/// Everything a check sends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckRequest {
    /// The client.
    pub source: Peer,
    /// The destination: the Service VIP or pod address the tunnel was opened to.
    pub destination: Peer,
    /// HTTP attributes; `None` for a TCP tunnel.
    pub http: Option<HttpRequestAttributes>,
}

impl CheckRequest {
    /// The connection attributes of the tunnel in `ctx`.
    pub fn of_tunnel(ctx: &RequestContext) -> Self {
        let t = &ctx.tunnel;
        CheckRequest {
            source: Peer {
                address: t.source_addr(),
                principal: Some(format!("spiffe://{}", t.peer.principal())),
            },
            destination: Peer {
                address: Some(t.authority),
                principal: None,
            },
            http: None,
        }
    }

    /// The check for the HTTP request `parts` (after path normalization) in `ctx`.
    pub fn of_request(ctx: &RequestContext, parts: &Parts) -> Self {
        let mut out = Self::of_tunnel(ctx);
        let mut headers: Vec<(String, String)> = Vec::new();
        for (name, value) in &parts.headers {
            let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
            match headers.iter_mut().find(|(n, _)| n == name.as_str()) {
                Some((_, existing)) => {
                    existing.push(',');
                    existing.push_str(&v);
                }
                None => headers.push((name.as_str().to_string(), v)),
            }
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let id = header("x-request-id").unwrap_or_else(crate::model::request_id);
        let host = header("host")
            .or_else(|| parts.uri.authority().map(|a| a.to_string()))
            .unwrap_or_default();
        let size = header("content-length")
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(-1);
        out.http = Some(HttpRequestAttributes {
            id,
            method: parts.method.to_string(),
            path: parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into()),
            host,
            scheme: "http".into(),
            protocol: match parts.version {
                Version::HTTP_2 => "HTTP/2",
                Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            }
            .into(),
            headers,
            size,
            body: None,
            partial_body: false,
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_support::context;

    #[test]
    fn request_attributes() {
        let ctx = context();
        let (parts, _) = http::Request::post("/a/b?x=1")
            .header("Host", "echo.default.svc.cluster.local")
            .header("X-Multi", "1")
            .header("x-multi", "2")
            .header("content-length", "5")
            .body(())
            .unwrap()
            .into_parts();
        let c = CheckRequest::of_request(&ctx, &parts);
        assert_eq!(
            c.source.principal.as_deref(),
            Some("spiffe://cluster.local/ns/default/sa/sleep")
        );
        assert_eq!(c.destination.address.unwrap().to_string(), "127.96.0.10:80");
        let h = c.http.unwrap();
        assert_eq!(h.method, "POST");
        assert_eq!(h.path, "/a/b?x=1");
        assert_eq!(h.host, "echo.default.svc.cluster.local");
        assert_eq!(h.size, 5);
        assert_eq!(h.protocol, "HTTP/1.1");
        assert!(h.headers.contains(&("x-multi".into(), "1,2".into())));
        assert_eq!(h.id.len(), 36);
    }
}
