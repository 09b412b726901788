//! An HBONE client: connects as a given identity, opens CONNECT tunnels, and speaks
//! HTTP/1.1 or h2c inside them. Plays the source ztunnel in tests and `waypoint request`.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use filters::body::Body;
use filters::model::Identity;
use http::{Method, Request, StatusCode};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use hbone::tls::{client_config, CertStore};
use hbone::{settings, H2Stream};

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TCP or TLS failed.
    #[error("connect: {0}")]
    Connect(#[from] std::io::Error),
    /// HTTP/2 failed.
    #[error("HTTP/2: {0}")]
    H2(#[from] h2::Error),
    /// The CONNECT was answered with a non-200 status.
    #[error("CONNECT refused with {0}")]
    Refused(StatusCode),
    /// HTTP inside the tunnel failed.
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
}

/// Connects to an HBONE server as the identity in `certs`.
#[derive(Clone)]
pub struct HboneClient {
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
}

impl HboneClient {
    /// A client for the server at `addr`, which must present `server_identity`.
    pub fn new(addr: SocketAddr, certs: Arc<CertStore>, server_identity: Identity) -> Self {
        Self {
            addr,
            config: client_config(certs, server_identity),
        }
    }

    /// Opens one mTLS HTTP/2 connection.
    pub async fn connect(&self) -> Result<HboneConnection, ClientError> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        let _ = tcp.set_nodelay(true);
        let tls = TlsConnector::from(self.config.clone())
            .connect(ServerName::IpAddress(self.addr.ip().into()), tcp)
            .await?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec());
        let (send, conn) = settings::client_builder()
            .handshake::<_, Bytes>(tls)
            .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(HboneConnection { send, peer })
    }
}

/// One HBONE connection; many tunnels may share it.
#[derive(Clone)]
pub struct HboneConnection {
    send: h2::client::SendRequest<Bytes>,
    peer: Option<Vec<u8>>,
}

impl HboneConnection {
    /// The leaf certificate the server presented (DER).
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        self.peer.as_deref()
    }

    /// Opens `CONNECT authority` with extra headers (`forwarded`, `baggage`, ...).
    pub async fn tunnel(
        &self,
        authority: SocketAddr,
        headers: &[(&str, &str)],
    ) -> Result<H2Stream, ClientError> {
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri(authority.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(()).expect("valid CONNECT");
        let mut send = self.send.clone().ready().await?;
        let (resp, stream) = send.send_request(req, false)?;
        let resp = resp.await?;
        if resp.status() != StatusCode::OK {
            return Err(ClientError::Refused(resp.status()));
        }
        Ok(H2Stream::new(stream, resp.into_body()))
    }

    /// Sends `req` (any method and authority) on the connection and returns the status it
    /// got: a malformed or refused tunnel request, as a misbehaving client sends one.
    pub async fn status_of(&self, req: Request<()>) -> Result<StatusCode, ClientError> {
        let mut send = self.send.clone().ready().await?;
        let (resp, _stream) = send.send_request(req, true)?;
        Ok(resp.await?.status())
    }

    /// Opens `CONNECT authority` with the headers a source ztunnel sends for `source`.
    pub async fn tunnel_from(
        &self,
        authority: SocketAddr,
        source: &crate::source::SourceWorkload,
    ) -> Result<H2Stream, ClientError> {
        let headers = source.connect_headers();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.tunnel(authority, &headers).await
    }

    /// A tunnel speaking HTTP/1.1.
    pub async fn http1(
        &self,
        authority: SocketAddr,
    ) -> Result<http1::SendRequest<Body>, ClientError> {
        http1_over(self.tunnel(authority, &[]).await?).await
    }

    /// A tunnel speaking HTTP/2 with prior knowledge.
    pub async fn h2c(
        &self,
        authority: SocketAddr,
    ) -> Result<http2::SendRequest<Body>, ClientError> {
        h2c_over(self.tunnel(authority, &[]).await?).await
    }
}

/// Starts an HTTP/1.1 client connection over `stream`.
pub async fn http1_over(stream: H2Stream) -> Result<http1::SendRequest<Body>, ClientError> {
    let (send, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(send)
}

/// Starts an h2c client connection over `stream`.
pub async fn h2c_over(stream: H2Stream) -> Result<http2::SendRequest<Body>, ClientError> {
    let (send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}
