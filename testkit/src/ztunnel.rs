//! A fake destination ztunnel: an HBONE server on `podIP:15008` that checks the caller's
//! identity and that the CONNECT authority is its own IP, then serves an app per port.
//! The source side (what ztunnel sends to a waypoint on the CONNECT: `baggage`,
//! `forwarded`, `traceparent`) is [`super::source`], used by [`super::client`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use filters::model::Identity;
use http::{Method, Response, StatusCode};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::echo::{self, EchoIdentity};
use hbone::tls::{identity_of, provider, Certs};
use hbone::{settings, H2Stream, HBONE_PORT};

/// What a port of the fake pod serves.
#[derive(Debug, Clone)]
pub enum App {
    /// The echo app (HTTP/1.1 and h2c).
    Echo,
    /// Echoes bytes back until the client half-closes, then closes.
    TcpEcho,
    /// Sends a banner first (a server-first protocol), then echoes.
    ServerFirst(&'static str),
    /// Delivers the tunnel's bytes to a local TCP server (as a real ztunnel delivers to the
    /// pod's app), both directions.
    Forward(std::net::SocketAddr),
}

/// Counters a test reads to prove connection reuse.
#[derive(Debug, Default)]
pub struct Counters {
    /// TLS handshakes completed.
    pub handshakes: AtomicUsize,
    /// CONNECT streams accepted.
    pub connects: AtomicUsize,
    /// CONNECTs refused (wrong caller or authority).
    pub refused: AtomicUsize,
    /// HTTP requests the echo app answered.
    pub requests: AtomicUsize,
}

/// A running fake ztunnel.
pub struct FakeZtunnel {
    /// The pod IP it stands for.
    pub ip: IpAddr,
    /// Connection counters.
    pub counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl Drop for FakeZtunnel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How to run a fake ztunnel.
pub struct ZtunnelOptions {
    /// The pod IP to listen on (port 15008).
    pub ip: IpAddr,
    /// The pod's certificate (its SPIFFE identity) and the roots.
    pub certs: Certs,
    /// The only identity allowed to connect (the waypoint's); `None` allows any.
    pub allowed_caller: Option<Identity>,
    /// What the echo app reports.
    pub who: EchoIdentity,
    /// Apps by target port; ports not listed serve [`App::Echo`].
    pub apps: HashMap<u16, App>,
}

impl FakeZtunnel {
    /// Starts on a fresh loopback IP from [`super::free_loopback_ip`], retrying if another
    /// process grabs the address first. `opts` builds the options for the chosen IP.
    pub async fn start_fresh(opts: impl Fn(IpAddr) -> ZtunnelOptions) -> std::io::Result<Self> {
        let mut last = None;
        for _ in 0..5 {
            match Self::start(opts(super::free_loopback_ip(HBONE_PORT))).await {
                Ok(z) => return Ok(z),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no free loopback IP")))
    }

    /// Binds `ip:15008` and serves until dropped.
    pub async fn start(opts: ZtunnelOptions) -> std::io::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::new(opts.ip, HBONE_PORT)).await?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(opts.certs.roots.clone(), provider())
                .build()
                .map_err(std::io::Error::other)?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(std::io::Error::other)?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(FixedCert(opts.certs.key.clone())));
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared {
            ip: opts.ip,
            allowed: opts.allowed_caller,
            who: Arc::new(opts.who),
            apps: opts.apps,
            counters: counters.clone(),
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                // As ztunnel does: no Nagle delay on HBONE connections.
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let shared = shared.clone();
                tokio::spawn(async move { shared.connection(acceptor, tcp).await });
            }
        });
        Ok(Self {
            ip: opts.ip,
            counters,
            task,
        })
    }
}

/// A server certificate resolver that always presents one certificate.
#[derive(Debug)]
pub(crate) struct FixedCert(pub(crate) Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for FixedCert {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

struct Shared {
    ip: IpAddr,
    allowed: Option<Identity>,
    who: Arc<EchoIdentity>,
    apps: HashMap<u16, App>,
    counters: Arc<Counters>,
}

impl Shared {
    async fn connection(self: Arc<Self>, acceptor: TlsAcceptor, tcp: tokio::net::TcpStream) {
        let Ok(tls) = acceptor.accept(tcp).await else {
            return;
        };
        self.counters.handshakes.fetch_add(1, Ordering::Relaxed);
        let caller = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| identity_of(c).ok());
        if let Some(allowed) = &self.allowed {
            if caller.as_ref() != Some(allowed) {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let Ok(mut conn) = settings::server_builder().handshake::<_, Bytes>(tls).await else {
            return;
        };
        while let Some(Ok((req, mut respond))) = conn.accept().await {
            let authority: Option<SocketAddr> =
                req.uri().authority().and_then(|a| a.as_str().parse().ok());
            let ok =
                req.method() == Method::CONNECT && authority.is_some_and(|a| a.ip() == self.ip);
            if !ok {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                let resp = Response::builder()
                    .status(StatusCode::BAD_REQUEST)
                    .body(())
                    .expect("valid");
                let _ = respond.send_response(resp, true);
                continue;
            }
            self.counters.connects.fetch_add(1, Ordering::Relaxed);
            let port = authority.expect("checked").port();
            let Ok(send) = respond.send_response(Response::new(()), false) else {
                continue;
            };
            let stream = H2Stream::new(send, req.into_body());
            let app = self.apps.get(&port).cloned().unwrap_or(App::Echo);
            let who = self.who.clone();
            tokio::spawn(serve_app(app, who, stream, self.counters.clone()));
        }
    }
}

async fn serve_app(
    app: App,
    who: Arc<EchoIdentity>,
    mut stream: H2Stream,
    counters: Arc<Counters>,
) {
    match app {
        App::Echo => {
            let svc = service_fn(move |req| {
                counters.requests.fetch_add(1, Ordering::Relaxed);
                echo::handle(who.clone(), req)
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        }
        App::TcpEcho => tcp_echo(&mut stream).await,
        App::ServerFirst(banner) => {
            if stream.write_all(banner.as_bytes()).await.is_ok() {
                tcp_echo(&mut stream).await;
            }
        }
        App::Forward(addr) => match tokio::net::TcpStream::connect(addr).await {
            Ok(mut app) => {
                let _ = tokio::io::copy_bidirectional(&mut stream, &mut app).await;
            }
            Err(e) => tracing::debug!(%addr, error = %e, "fake ztunnel: app unreachable"),
        },
    }
}

async fn tcp_echo(stream: &mut H2Stream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = stream.shutdown().await;
}
