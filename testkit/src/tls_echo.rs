//! The echo app over plain mTLS (HTTP/1.1 over TLS 1.3, client certificate required and
//! verified against the mesh roots): the upstream of the nginx peer in the benchmark, so
//! that every scenario ends at the same echo app with the same response bytes.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::server::Acceptor;
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::LazyConfigAcceptor;

use super::echo::{self, EchoIdentity};
use hbone::tls::{provider, Certs};

/// A running TLS echo server; stops when dropped.
pub struct TlsEcho {
    /// Where it listens.
    pub addr: SocketAddr,
    server_names: Arc<std::sync::Mutex<Vec<Option<String>>>>,
    client_certificates: Arc<std::sync::Mutex<Vec<Option<Vec<u8>>>>>,
    task: JoinHandle<()>,
}

impl Drop for TlsEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsEcho {
    /// Binds `127.0.0.1:0` and serves the echo app with `certs` until dropped; clients
    /// must present a certificate signed by `certs`' roots.
    pub async fn start(certs: &Certs, who: EchoIdentity) -> std::io::Result<Self> {
        Self::start_mutual(SocketAddr::from(([127, 0, 0, 1], 0)), certs, who).await
    }

    /// As [`Self::start`] at `addr` (a server that requires a client certificate signed by
    /// `certs`' roots, for DestinationRule `tls` mode MUTUAL).
    pub async fn start_mutual(
        addr: SocketAddr,
        certs: &Certs,
        who: EchoIdentity,
    ) -> std::io::Result<Self> {
        let verifier = WebPkiClientVerifier::builder_with_provider(certs.roots.clone(), provider())
            .build()
            .map_err(std::io::Error::other)?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(std::io::Error::other)?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(super::ztunnel::FixedCert(certs.key.clone())));
        Self::serve(addr, config, who).await
    }

    /// As [`Self::start`] at `addr`, without asking clients for a certificate (a server
    /// on the internet, for DestinationRule `tls` mode SIMPLE).
    pub async fn start_simple(
        addr: SocketAddr,
        certs: &Certs,
        who: EchoIdentity,
    ) -> std::io::Result<Self> {
        let config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(std::io::Error::other)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(super::ztunnel::FixedCert(certs.key.clone())));
        Self::serve(addr, config, who).await
    }

    /// The SNI each connection's ClientHello sent (`None`: none), in order, whether or not
    /// the handshake then succeeded.
    pub fn server_names(&self) -> Vec<Option<String>> {
        self.server_names.lock().unwrap().clone()
    }

    /// The leaf certificate (DER) each completed handshake's client presented (`None`:
    /// none), in order.
    pub fn client_certificates(&self) -> Vec<Option<Vec<u8>>> {
        self.client_certificates.lock().unwrap().clone()
    }

    async fn serve(
        addr: SocketAddr,
        mut config: ServerConfig,
        who: EchoIdentity,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        let who = Arc::new(who);
        let server_names: Arc<std::sync::Mutex<Vec<Option<String>>>> = Arc::default();
        let names = server_names.clone();
        let client_certificates: Arc<std::sync::Mutex<Vec<Option<Vec<u8>>>>> = Arc::default();
        let clients = client_certificates.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let (config, who, names, clients) =
                    (config.clone(), who.clone(), names.clone(), clients.clone());
                tokio::spawn(async move {
                    // The SNI is recorded from the ClientHello, before the handshake can
                    // fail (a client refusing the certificate still shows what it sent).
                    let lazy = LazyConfigAcceptor::new(Acceptor::default(), tcp);
                    let Ok(start) = lazy.await else {
                        return;
                    };
                    let sni = start.client_hello().server_name().map(str::to_string);
                    names.lock().unwrap().push(sni);
                    let Ok(tls) = start.into_stream(config).await else {
                        return;
                    };
                    let leaf = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| c.as_ref().to_vec());
                    clients.lock().unwrap().push(leaf);
                    let svc = service_fn(move |req| echo::handle(who.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            server_names,
            client_certificates,
            task,
        })
    }
}
