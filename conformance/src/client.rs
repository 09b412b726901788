//! Sends one case's request as the in-mesh client would, and records what came back.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::BodyExt;
use testkit::client::{HboneClient, HboneConnection};

use crate::cases;
use crate::cluster::{Cluster, Pod, GATEWAY_NS, WAYPOINT_NS};
use crate::Profile;

/// What a request produced.
#[derive(Debug, Clone)]
pub struct Observed {
    /// HTTP status; for gRPC, 200 only when `grpc-status` is 0.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The echo app's description of the request it received, if a backend answered.
    pub echo: Option<serde_json::Value>,
    /// `grpc-status`, for gRPC calls.
    pub grpc_status: Option<u32>,
}

impl Observed {
    /// The answering pod's name.
    pub fn pod(&self) -> Option<&str> {
        self.echo.as_ref()?.get("pod")?.as_str()
    }
}

/// Sends `req` from its client pod; `kind` is `http` or `grpc`.
pub async fn send(
    cluster: &Cluster,
    req: &cases::Request,
    kind: &str,
    profile: Profile,
) -> anyhow::Result<Observed> {
    let gateway = profile == Profile::Gateway;
    let (app, ns) = match (&req.client, gateway) {
        (Some(c), _) => (c.app.as_str(), c.namespace.as_str()),
        (None, false) => ("echo-v1", WAYPOINT_NS),
        (None, true) => ("infra-backend-v1", GATEWAY_NS),
    };
    let from = cluster.pod(app, ns)?;
    let grpc = kind == "grpc";
    let port = if grpc { 7070 } else { 80 };
    let (target, direct) = if gateway {
        let vip = cluster
            .frontend()
            .ok_or_else(|| anyhow::anyhow!("no frontend Service"))?;
        (SocketAddr::new(vip, port), false)
    } else {
        cluster.resolve(&req.host, ns, port)?
    };
    let req = &concrete_request(req, target);
    let client = hbone_client(cluster, from, target, direct)?;
    let conn = client.connect().await?;
    if grpc {
        return send_grpc(&conn, target, req).await;
    }
    send_http(&conn, target, req).await
}

/// Fills in the Host value (the address called when empty) and a fresh `{uuid}` in the path.
fn concrete_request(req: &cases::Request, target: SocketAddr) -> cases::Request {
    // Gateway-profile tests name the Host header; empty means the address called.
    let host_value = if req.host.is_empty() {
        target.to_string()
    } else {
        req.host.clone()
    };
    // `{uuid}`: a fresh id per request (upstream's retry tests count calls per id).
    let path = req.path.as_ref().map(|p| p.replace("{uuid}", &fresh_id()));
    cases::Request {
        host: host_value,
        path,
        ..req.clone()
    }
}

/// An HBONE client from `from` to where ztunnel would send traffic for `target`.
fn hbone_client(
    cluster: &Cluster,
    from: &Pod,
    target: SocketAddr,
    direct: bool,
) -> anyhow::Result<HboneClient> {
    // ztunnel sends Service traffic to the waypoint; pod-addressed traffic goes straight to
    // the pod (the waypoint serves Services only).
    if direct {
        let pod = cluster
            .pods
            .iter()
            .find(|p| p.ip == target.ip())
            .ok_or_else(|| anyhow::anyhow!("no pod at {target}"))?;
        cluster.client(from, SocketAddr::new(pod.ip, 15008), pod.identity.clone())
    } else {
        cluster.client(from, cluster.waypoint.hbone, cluster.waypoint_identity())
    }
}

/// Sends `req` as a unary gRPC call over h2c and maps `grpc-status` onto the HTTP status.
async fn send_grpc(
    conn: &HboneConnection,
    target: SocketAddr,
    req: &cases::Request,
) -> anyhow::Result<Observed> {
    let service = req.service.as_deref().unwrap_or("proto.EchoTestService");
    let method = req.method.as_deref().unwrap_or("Echo");
    let mut b = Request::post(format!("http://{}/{service}/{method}", req.host))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in &req.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    let body = filters::body::full(Bytes::from_static(&[0, 0, 0, 0, 0]));
    let resp = conn.h2c(target).await?.send_request(b.body(body)?).await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let collected = resp.into_body().collect().await?;
    let grpc_status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let data = collected.to_bytes();
    let echo = (data.len() > 5)
        .then(|| serde_json::from_slice(&data[5..]).ok())
        .flatten();
    let grpc_status: Option<u32> = grpc_status.and_then(|s| s.parse().ok());
    let status = if status == 200 && grpc_status == Some(0) {
        200
    } else if status == 200 {
        500
    } else {
        status
    };
    Ok(Observed {
        status,
        headers,
        echo,
        grpc_status,
    })
}

/// Sends `req` as an HTTP/1.1 request and parses the echo body.
async fn send_http(
    conn: &HboneConnection,
    target: SocketAddr,
    req: &cases::Request,
) -> anyhow::Result<Observed> {
    // `host` names where the client connects; a `Host` header in the case overrides what
    // the request says (upstream's "wrong hostname" tests).
    let host_override = req.headers.keys().any(|k| k.eq_ignore_ascii_case("host"));
    let mut b = Request::builder()
        .method(req.method.as_deref().unwrap_or("GET"))
        .uri(req.path.as_deref().unwrap_or("/"));
    if !host_override {
        b = b.header("host", req.host.as_str());
    }
    for (k, v) in &req.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    let resp = conn
        .http1(target)
        .await?
        .send_request(b.body(filters::body::empty())?)
        .await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let data = resp.into_body().collect().await?.to_bytes();
    let echo = serde_json::from_slice(&data).ok();
    Ok(Observed {
        status,
        headers,
        echo,
        grpc_status: None,
    })
}

fn fresh_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{t:x}-{:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
