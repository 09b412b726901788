use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use filters::model::Identity;
use hbone::tls::CertStore;
use http::{Method, Request};
use http_body_util::BodyExt;
use testkit::client::HboneClient;

#[derive(Debug, Args)]
pub struct RequestArgs {
    /// HBONE server to connect to (the waypoint's 15008 listener).
    #[arg(long)]
    addr: SocketAddr,
    /// CONNECT authority: the Service `VIP:port` (or `podIP:port`).
    #[arg(long)]
    authority: SocketAddr,
    /// Identity the server must present (the waypoint's).
    #[arg(long)]
    server_identity: Identity,
    /// The identity we connect as.
    #[command(flatten)]
    certs: waypoint::cli::CertArgs,
    /// Speak HTTP/2 (h2c) inside the tunnel instead of HTTP/1.1.
    #[arg(long)]
    http2: bool,
    /// Request method.
    #[arg(short = 'X', long, default_value = "GET")]
    method: Method,
    /// Request header `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Request body.
    #[arg(short = 'd', long)]
    data: Option<String>,
    /// Host header (default: the authority).
    #[arg(long)]
    host: Option<String>,
    /// Request path and query.
    #[arg(default_value = "/")]
    path: String,
}

pub async fn run(args: RequestArgs) -> anyhow::Result<()> {
    let certs = Arc::new(CertStore::load(args.certs.paths())?);
    let client = HboneClient::new(args.addr, certs, args.server_identity);
    let conn = client.connect().await.context("HBONE connect")?;
    let host = args.host.unwrap_or_else(|| args.authority.to_string());
    let body = match args.data {
        Some(d) => filters::body::full(d),
        None => filters::body::empty(),
    };
    let mut req = Request::builder().method(args.method);
    if args.http2 {
        req = req.uri(format!("http://{host}{}", args.path));
    } else {
        req = req.uri(&args.path).header("host", &host);
    }
    for h in &args.headers {
        let (k, v) = h.split_once(':').context("headers are `Name: value`")?;
        req = req.header(k.trim(), v.trim());
    }
    let req = req.body(body)?;
    let resp = if args.http2 {
        conn.h2c(args.authority).await?.send_request(req).await?
    } else {
        conn.http1(args.authority).await?.send_request(req).await?
    };
    println!("{:?} {}", resp.version(), resp.status());
    for (k, v) in resp.headers() {
        println!("{k}: {}", String::from_utf8_lossy(v.as_bytes()));
    }
    println!();
    let body = resp.into_body().collect().await?.to_bytes();
    println!("{}", String::from_utf8_lossy(&body));
    Ok(())
}
