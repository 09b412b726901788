//! gRPC channels to the control plane: a Unix socket (pilot-agent's `./etc/istio/proxy/XDS`
//! and the SDS socket), a TCP address, or istiod itself over TLS ([`super::tls`]).

use std::path::PathBuf;
use std::sync::Arc;

use super::tls::{Credentials, IstiodTls};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

/// Where an xDS server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XdsAddress {
    /// A Unix socket path.
    Unix(PathBuf),
    /// `http://host:port` (plaintext gRPC).
    Http(String),
    /// istiod over TLS with the workload's token (no pilot-agent).
    Tls(Arc<IstiodTls>),
}

impl XdsAddress {
    /// The credentials requests to this address carry (only istiod over TLS has any).
    pub fn credentials(&self) -> Credentials {
        match self {
            XdsAddress::Tls(t) => Credentials(Some(t.clone())),
            _ => Credentials(None),
        }
    }
}

/// Why a channel could not be opened, with every cause in the message (tonic's own error
/// says only "transport error").
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConnectError(pub String);

impl From<tonic::transport::Error> for ConnectError {
    fn from(e: tonic::transport::Error) -> Self {
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            // Wrappers often repeat their cause's text; say each thing once.
            let text = cause.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = cause.source();
        }
        ConnectError(message)
    }
}

impl std::fmt::Display for XdsAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            XdsAddress::Unix(p) => write!(f, "unix:{}", p.display()),
            XdsAddress::Http(u) => f.write_str(u),
            XdsAddress::Tls(t) => write!(f, "https://{} ({})", t.address, t.server_name),
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
pub async fn channel(addr: &XdsAddress) -> Result<Channel, ConnectError> {
    let channel = match addr {
        XdsAddress::Http(url) => Endpoint::from_shared(url.clone())?.connect().await,
        XdsAddress::Tls(target) => {
            let target = target.clone();
            Endpoint::from_shared(format!("http://{}", target.address))?
                .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                    let target = target.clone();
                    async move { target.dial().await }
                }))
                .await
        }
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
    };
    Ok(channel?)
}
