//! The echo app over plain mTLS (HTTP/1.1 over TLS 1.3, client certificate required and
//! verified against the mesh roots): the upstream of the nginx peer in the benchmark, so
//! that every scenario ends at the same echo app with the same response bytes.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::echo::{self, EchoIdentity};
use hbone::tls::{provider, Certs};

/// A running TLS echo server; stops when dropped.
pub struct TlsEcho {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for TlsEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsEcho {
    /// Binds `127.0.0.1:0` and serves the echo app with `certs` until dropped.
    pub async fn start(certs: &Certs, who: EchoIdentity) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let verifier = WebPkiClientVerifier::builder_with_provider(certs.roots.clone(), provider())
            .build()
            .map_err(std::io::Error::other)?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(std::io::Error::other)?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(super::ztunnel::FixedCert(certs.key.clone())));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let who = Arc::new(who);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, who) = (acceptor.clone(), who.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(move |req| echo::handle(who.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Ok(Self { addr, task })
    }
}
