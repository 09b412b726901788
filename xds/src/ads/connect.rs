//! gRPC channels to the control plane: a Unix socket (pilot-agent's `./etc/istio/proxy/XDS`
//! and the SDS socket) or a TCP address.

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

/// Where an xDS server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XdsAddress {
    /// A Unix socket path.
    Unix(PathBuf),
    /// `http://host:port` (plaintext gRPC).
    Http(String),
}

impl std::fmt::Display for XdsAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            XdsAddress::Unix(p) => write!(f, "unix:{}", p.display()),
            XdsAddress::Http(u) => f.write_str(u),
        }
    }
}

impl std::str::FromStr for XdsAddress {
    type Err = String;

    /// `unix:/path`, `/path` or `http://host:port`.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            return Ok(XdsAddress::Unix(p.into()));
        }
        if s.starts_with('/') || s.starts_with("./") {
            return Ok(XdsAddress::Unix(s.into()));
        }
        if s.starts_with("http://") {
            return Ok(XdsAddress::Http(s.to_string()));
        }
        Err(format!("{s:?}: expected unix:<path> or http://host:port"))
    }
}

/// Connects a channel (HTTP/2, lazily reconnecting is left to the caller).
pub async fn channel(addr: &XdsAddress) -> Result<Channel, tonic::transport::Error> {
    match addr {
        XdsAddress::Http(url) => Endpoint::from_shared(url.clone())?.connect().await,
        XdsAddress::Unix(path) => {
            let path = path.clone();
            // The URI is not used to connect; the connector dials the socket.
            Endpoint::from_static("http://localhost")
                .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
                .await
        }
    }
}
