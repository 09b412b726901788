use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use filters::model::Identity;
use hbone::tls::CertStore;
use testkit::client::HboneClient;
use testkit::loadgen::{self, LoadConfig};

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// HBONE server (the waypoint, or a destination ztunnel).
    #[arg(long)]
    addr: SocketAddr,
    /// CONNECT authority (`VIP:port`).
    #[arg(long)]
    authority: SocketAddr,
    /// Identity the server must present.
    #[arg(long)]
    server_identity: Identity,
    /// Our identity's certificates.
    #[command(flatten)]
    certs: waypoint::cli::CertArgs,
    /// Host header.
    #[arg(long, default_value = "echo")]
    host: String,
    /// Path and query.
    #[arg(long, default_value = "/bytes?n=1024")]
    path: String,
    /// Tunnels.
    #[arg(long, default_value_t = 4)]
    tunnels: usize,
    /// HBONE connections.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// h2c inside tunnels.
    #[arg(long)]
    http2: bool,
    /// Total requests per second (open loop); omit for closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Duration in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many requests.
    #[arg(long, default_value_t = 10_000_000)]
    requests: u64,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub async fn run(a: LoadArgs) -> anyhow::Result<()> {
    let certs = Arc::new(CertStore::load(a.certs.paths())?);
    let client = HboneClient::new(a.addr, certs, a.server_identity);
    let report = loadgen::run(
        client,
        LoadConfig {
            authority: a.authority,
            host: a.host,
            path: a.path,
            tunnels: a.tunnels,
            connections: a.connections,
            http2: a.http2,
            rate: a.rate,
            max_requests: a.requests,
            duration: Duration::from_secs_f64(a.duration),
        },
    )
    .await?;
    println!("{report}");
    if let Some(p) = a.json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}
