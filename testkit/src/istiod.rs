//! A stand-in for istiod's port 15012: the test ADS server and the test CA on one TLS
//! listener, with a serving certificate for `istiod.istio-system.svc` signed by the test
//! root, as a waypoint without pilot-agent meets it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hbone::tls::DevCa;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::ca_server::CaServer;
use crate::AdsServer;

/// istiod's DNS name in its serving certificate.
pub const ISTIOD_SAN: &str = "istiod.istio-system.svc";

/// A TLS connection tonic can serve.
pub struct TlsConn(TlsStream<TcpStream>);

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The running stand-in.
pub struct FakeIstiod {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The ADS server behind it.
    pub ads: AdsServer,
    /// The CA behind it.
    pub ca: CaServer,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeIstiod {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeIstiod {
    /// Serves `ads` and `ca` over TLS on a free loopback port, presenting a certificate for
    /// [`ISTIOD_SAN`] issued by `root`.
    pub async fn start(root: &DevCa, ads: AdsServer, ca: CaServer) -> io::Result<Self> {
        let serving = root.issue_dns(ISTIOD_SAN).map_err(io::Error::other)?;
        let chain = rustls_pemfile::certs(&mut serving.chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()?;
        let key = rustls_pemfile::private_key(&mut serving.key_pem.as_bytes())?
            .ok_or_else(|| io::Error::other("no key"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(io::Error::other)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<TlsConn>>(16);
        let accept = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match acceptor.accept(tcp).await {
                        Ok(tls) => {
                            let _ = tx.send(Ok(TlsConn(tls))).await;
                        }
                        Err(e) => tracing::debug!(error = %e, "fake istiod: TLS handshake failed"),
                    }
                });
            }
        });
        let router = tonic::transport::Server::builder()
            .add_service(ads.service())
            .add_service(ca.service());
        let task = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
            if let Err(e) = router.serve_with_incoming(incoming).await {
                tracing::warn!(error = %e, "fake istiod failed");
            }
            accept.abort();
        });
        Ok(Self {
            addr,
            ads,
            ca,
            task,
        })
    }
}
