//! An HBONE load generator: N tunnels (over one or more HBONE connections) speaking
//! HTTP/1.1 or h2c, open loop at a fixed rate (latency measured from each request's
//! intended send time, so a stall is not hidden: no coordinated omission) or closed loop
//! for saturation. Bounded by request count and duration. [`run_https`] drives the same
//! loop over plain HTTPS with a client certificate, for peers that do not speak HBONE.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use http::Request;
use http_body_util::BodyExt;
use serde::Serialize;
use tokio::sync::Mutex;

use crate::client::{HboneClient, HboneConnection};

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// CONNECT authority.
    pub authority: SocketAddr,
    /// Host header.
    pub host: String,
    /// Path and query.
    pub path: String,
    /// Tunnels (each carries one request at a time over HTTP/1.1, or many over h2c).
    pub tunnels: usize,
    /// HBONE connections the tunnels are spread over.
    pub connections: usize,
    /// h2c inside tunnels instead of HTTP/1.1.
    pub http2: bool,
    /// Requests per second in total; `None` for closed loop.
    pub rate: Option<f64>,
    /// Stop after this many requests.
    pub max_requests: u64,
    /// Stop after this long.
    pub duration: Duration,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Successful (2xx) requests.
    pub requests: u64,
    /// Failed requests (errors or non-2xx).
    pub errors: u64,
    /// Wall time, seconds.
    pub elapsed_s: f64,
    /// Achieved requests per second.
    pub rps: f64,
    /// Latency percentiles in microseconds.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Maximum.
    pub max_us: u64,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "requests {} errors {} in {:.2}s ({:.0} req/s); latency p50 {}us p90 {}us p99 {}us p99.9 {}us max {}us",
            self.requests, self.errors, self.elapsed_s, self.rps, self.p50_us, self.p90_us, self.p99_us, self.p999_us, self.max_us
        )
    }
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<filters::body::Body>),
    H2(hyper::client::conn::http2::SendRequest<filters::body::Body>),
}

impl Sender {
    async fn open(conn: &HboneConnection, cfg: &LoadConfig) -> anyhow::Result<Self> {
        Ok(if cfg.http2 {
            Sender::H2(conn.h2c(cfg.authority).await?)
        } else {
            Sender::H1(conn.http1(cfg.authority).await?)
        })
    }

    async fn send(&mut self, cfg: &LoadConfig) -> anyhow::Result<bool> {
        let resp = match self {
            Sender::H1(s) => {
                s.ready().await?;
                let req = Request::get(cfg.path.as_str())
                    .header("host", cfg.host.as_str())
                    .body(filters::body::empty())?;
                s.send_request(req).await?
            }
            Sender::H2(s) => {
                let req = Request::get(format!("http://{}{}", cfg.host, cfg.path))
                    .body(filters::body::empty())?;
                s.send_request(req).await?
            }
        };
        let ok = resp.status().is_success();
        resp.into_body().collect().await?;
        Ok(ok)
    }
}

/// Runs the load over HBONE and reports.
pub async fn run(client: HboneClient, cfg: LoadConfig) -> anyhow::Result<LoadReport> {
    let mut conns = Vec::new();
    for _ in 0..cfg.connections.max(1) {
        conns.push(client.connect().await?);
    }
    let mut senders = Vec::new();
    for i in 0..cfg.tunnels.max(1) {
        senders.push(Sender::open(&conns[i % conns.len()], &cfg).await?);
    }
    drive(senders, cfg).await
}

/// Runs the same load over plain HTTPS (HTTP/1.1 over TLS, presenting the client
/// certificate in `tls`) to `addr`: one TLS connection per tunnel of `cfg`
/// (`cfg.authority`, `cfg.connections` and `cfg.http2` are not used). For peers that do
/// not speak HBONE, such as nginx.
pub async fn run_https(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    cfg: LoadConfig,
) -> anyhow::Result<LoadReport> {
    let mut senders = Vec::new();
    for _ in 0..cfg.tunnels.max(1) {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(
                rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
                tcp,
            )
            .await?;
        let (send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        senders.push(Sender::H1(send));
    }
    drive(senders, cfg).await
}

/// The measurement loop shared by every transport: each sender is one tunnel (or
/// connection) carrying requests one after another.
async fn drive(senders: Vec<Sender>, cfg: LoadConfig) -> anyhow::Result<LoadReport> {
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let counts = Arc::new((
        std::sync::atomic::AtomicU64::new(0),
        std::sync::atomic::AtomicU64::new(0),
    ));
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let per_tunnel_interval = cfg
        .rate
        .map(|r| Duration::from_secs_f64(senders.len() as f64 / r));
    let mut tasks = Vec::new();
    for (i, mut sender) in senders.into_iter().enumerate() {
        let (cfg, hist, counts, sent) = (cfg.clone(), hist.clone(), counts.clone(), sent.clone());
        let n_tunnels = cfg.tunnels.max(1) as u32;
        tasks.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            // Stagger tunnels across one interval so the aggregate rate is smooth.
            let mut intended = match per_tunnel_interval {
                Some(iv) => start + iv * (i as u32) / n_tunnels,
                None => start,
            };
            loop {
                if sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= cfg.max_requests {
                    break;
                }
                if per_tunnel_interval.is_some() {
                    wait_until(intended).await;
                    if Instant::now() >= deadline {
                        break;
                    }
                } else {
                    intended = Instant::now();
                    if intended >= deadline {
                        break;
                    }
                }
                let ok = matches!(sender.send(&cfg).await, Ok(true));
                let us = intended.elapsed().as_micros().max(1) as u64;
                let _ = local.record(us.min(60_000_000));
                let c = if ok { &counts.0 } else { &counts.1 };
                c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Some(iv) = per_tunnel_interval {
                    intended += iv;
                }
            }
            hist.lock().await.add(&local).expect("same bounds");
        }));
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let h = hist.lock().await;
    let requests = counts.0.load(std::sync::atomic::Ordering::Relaxed);
    Ok(LoadReport {
        requests,
        errors: counts.1.load(std::sync::atomic::Ordering::Relaxed),
        elapsed_s: elapsed,
        rps: requests as f64 / elapsed.max(1e-9),
        p50_us: h.value_at_quantile(0.50),
        p90_us: h.value_at_quantile(0.90),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
    })
}

/// Waits until `t` with better than timer-wheel precision: tokio's timer rounds to a
/// millisecond, which at 1000 req/s would show up as latency. Sleeps to 1 ms before, then
/// yields until the instant.
async fn wait_until(t: Instant) {
    let slack = Duration::from_millis(1);
    if let Some(early) = t.checked_sub(slack) {
        if Instant::now() < early {
            tokio::time::sleep_until(early.into()).await;
        }
    }
    while Instant::now() < t {
        tokio::task::yield_now().await;
    }
}

/// Opens `count` idle tunnels (and keeps them) to measure memory per tunnel.
pub async fn idle_tunnels(
    client: &HboneClient,
    authority: SocketAddr,
    count: usize,
    per_connection: usize,
) -> anyhow::Result<Vec<hbone::H2Stream>> {
    let mut out = Vec::with_capacity(count);
    let mut conn = client.connect().await?;
    for i in 0..count {
        if i > 0 && i % per_connection.max(1) == 0 {
            conn = client.connect().await?;
        }
        out.push(conn.tunnel(authority, &[]).await?);
    }
    Ok(out)
}

/// HBONE handshakes per second: sequential mTLS + HTTP/2 connects for `duration`.
pub async fn handshakes(client: &HboneClient, duration: Duration, max: u64) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration && n < max {
        let conn = client.connect().await?;
        drop(conn);
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}
