//! The upstream side: connections from the waypoint to destination pods.
//!
//! - [`hbone_pool`]: pooled mTLS HTTP/2 connections to `podIP:15008`, one CONNECT stream per
//!   upstream tunnel, many tunnels per connection.
//! - [`pool`]: HTTP client connections (hyper) over those tunnels, reused across requests.
//! - [`forward`]: the innermost tower service of the filter chain.
//! - [`http_tunnel`]: a TCP tunnel carried in an HTTP `CONNECT`/`POST` request to a proxy at
//!   the endpoint (DestinationRule `trafficPolicy.tunnel`).
//! - [`happy_eyeballs`]: connecting to an endpoint with several addresses (dual stack).
//! - [`dns`]: the resolver keeping the addresses of DNS upstreams (ServiceEntries) fresh.
//! - [`dial`]: a Service reached by `host:port` through the snapshot (the waypoint's own
//!   clients: ext_authz, span export), and [`grpc`], a tonic channel over the pools.
//!
//! Connection reuse lives here, in code we control, rather than in Pingora's upstream pool
//! (which cannot reuse virtual streams such as HBONE tunnels).

mod conn;
mod connection_cap;
pub mod dial;
pub mod dns;
pub mod forward;
pub mod forward_proxy;
pub mod grpc;
pub mod h1;
pub mod happy_eyeballs;
pub mod hbone_pool;
pub mod http_tunnel;
pub mod pool;
mod tls;

use std::sync::Arc;

pub use conn::UpstreamIo;
pub use forward::Forward;

use filters::balance::Picked;
use filters::model::ProxyHeader;
use filters::ProxyError;

use hbone::tls::CertStore;

/// The upstream connection pools.
pub struct Upstream {
    /// HBONE connections to destination ztunnels.
    pub hbone: hbone_pool::HbonePool,
    /// HTTP connections over tunnels (or plain TCP).
    pub http: pool::HttpPool,
    /// Client configurations for TLS originated inside tunnels.
    tls: tls::TlsConfigs,
    /// The proxy, whose `connect_originate` access logs record failed HBONE tunnels.
    proxy: std::sync::Weak<crate::state::Proxy>,
}

impl Upstream {
    /// Empty pools presenting the certificates in `certs`, for `proxy`.
    pub fn new(certs: Arc<CertStore>, proxy: std::sync::Weak<crate::state::Proxy>) -> Self {
        Self {
            hbone: hbone_pool::HbonePool::new(certs),
            http: pool::HttpPool::default(),
            tls: tls::TlsConfigs::default(),
            proxy,
        }
    }

    /// Opens a byte stream to `picked` ([`Self::connect_raw`]), sends `proxy` (the PROXY
    /// protocol header, DestinationRule `proxyProtocol`) first, then runs TLS inside it
    /// when the port originates TLS (DestinationRule `tls`), sending `sni`: the header
    /// precedes the handshake, as istiod nests the sockets. All of it must be done within
    /// the port's connect timeout (the cluster's `connect_timeout`), else the attempt
    /// fails with [`ProxyError::UpstreamConnectTimeout`] (`UF`, `connection_timeout`).
    pub async fn connect(
        &self,
        picked: &Picked,
        sni: Option<&str>,
        proxy: Option<&ProxyHeader>,
    ) -> Result<UpstreamIo, ProxyError> {
        let after =
            filters::model::ConnectionLimits::connect_timeout_of(picked.connection_limits.as_ref());
        let deadline = tokio::time::Instant::now() + after;
        let io = self.connect_raw(picked, deadline, after).await?;
        match tokio::time::timeout_at(deadline, self.inside(io, picked, sni, proxy)).await {
            Ok(result) => result,
            Err(_) => Err(timed_out(picked, after)),
        }
    }

    /// What goes first on an open stream: the PROXY protocol header, then TLS.
    async fn inside(
        &self,
        mut io: UpstreamIo,
        picked: &Picked,
        sni: Option<&str>,
        proxy: Option<&ProxyHeader>,
    ) -> Result<UpstreamIo, ProxyError> {
        if let Some(header) = proxy {
            use tokio::io::AsyncWriteExt;
            let sent = match io.write_all(&header.encode()).await {
                Ok(()) => io.flush().await,
                Err(e) => Err(e),
            };
            sent.map_err(|e| ProxyError::UpstreamConnect {
                endpoint: picked.address.to_string(),
                reason: format!("sending the PROXY protocol header: {e}"),
            })?;
        }
        match &picked.tls {
            None => Ok(io),
            Some(settings) => self.tls.handshake(settings, sni, picked.address, io).await,
        }
    }

    /// Opens a byte stream to `picked` by `deadline` (`after` from now): an HBONE tunnel if
    /// the pod is in the mesh, else TCP. A pod with more than one IP (a dual-stack
    /// endpoint's `additional_addresses`) is tried at each in turn ([`happy_eyeballs`]);
    /// the pools keep the connection under the endpoint's address. A tunnel that cannot be
    /// opened, for any reason including the deadline, is logged as Envoy's
    /// `connect_originate` logs it (`UF`).
    async fn connect_raw(
        &self,
        picked: &Picked,
        deadline: tokio::time::Instant,
        after: std::time::Duration,
    ) -> Result<UpstreamIo, ProxyError> {
        let addresses = happy_eyeballs::order(picked.address, &picked.workload.ips);
        let (first, rest) = (addresses[0], &addresses[1..]);
        let delay = happy_eyeballs::ATTEMPT_DELAY;
        if picked.workload.hbone {
            let start = (std::time::SystemTime::now(), std::time::Instant::now());
            let identity = &picked.workload.identity;
            let tunnel = happy_eyeballs::connect(first, rest, delay, |address| {
                self.hbone.connect(address, identity)
            });
            let (e, reason) = match tokio::time::timeout_at(deadline, tunnel).await {
                Ok(Ok(stream)) => return Ok(UpstreamIo::Hbone(stream)),
                Ok(Err(e)) => {
                    let reason = match &e {
                        ProxyError::UpstreamConnect { reason, .. } => reason.clone(),
                        _ => String::new(),
                    };
                    (e, reason)
                }
                // Envoy's text for a connection its pool gave up on at the connect timeout.
                Err(_) => (timed_out(picked, after), "connection timeout".to_string()),
            };
            // Envoy's connect_originate could not open the tunnel: `UF`.
            if let Some(proxy) = self.proxy.upgrade() {
                let hbone = std::net::SocketAddr::new(picked.address.ip(), self.hbone.port());
                crate::telemetry::listener_log::originate_failed(
                    &proxy,
                    picked.address,
                    hbone,
                    &reason,
                    start,
                );
            }
            Err(e)
        } else {
            let tcp = happy_eyeballs::connect(first, rest, delay, |address| async move {
                tokio::net::TcpStream::connect(address).await.map_err(|e| {
                    ProxyError::UpstreamConnect {
                        endpoint: address.to_string(),
                        reason: e.to_string(),
                    }
                })
            });
            let tcp = match tokio::time::timeout_at(deadline, tcp).await {
                Ok(tcp) => tcp?,
                Err(_) => return Err(timed_out(picked, after)),
            };
            let _ = tcp.set_nodelay(true);
            if let Some(k) = picked.connection_limits.and_then(|l| l.tcp_keepalive) {
                set_tcp_keepalive(&tcp, &k);
            }
            Ok(UpstreamIo::Plain(tcp))
        }
    }
}

/// The error for a connection to `picked` not open within `after`.
fn timed_out(picked: &Picked, after: std::time::Duration) -> ProxyError {
    tracing::debug!(endpoint = %picked.address, ?after, "upstream connect timed out");
    ProxyError::UpstreamConnectTimeout {
        endpoint: picked.address.to_string(),
        after,
    }
}

/// Turns TCP keepalive on for `tcp` (DestinationRule `tcp.tcpKeepalive`), with the settings
/// `k` gives and the system's for the rest.
fn set_tcp_keepalive(tcp: &tokio::net::TcpStream, k: &filters::model::TcpKeepalive) {
    let mut params = socket2::TcpKeepalive::new();
    if let Some(t) = k.time {
        params = params.with_time(t);
    }
    if let Some(i) = k.interval {
        params = params.with_interval(i);
    }
    if let Some(p) = k.probes {
        params = params.with_retries(p);
    }
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&params) {
        tracing::warn!(error = %e, "could not set TCP keepalive on an upstream connection");
    }
}
