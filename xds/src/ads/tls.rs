//! istiod reached directly, without pilot-agent: gRPC over TLS to its port 15012, the
//! server verified against the mesh root (the `istio-ca-root-cert` ConfigMap) under
//! istiod's DNS name, and every request carrying the pod's projected service-account
//! token (`authorization: Bearer <token>`) and cluster id (`clusterid`), as istio-proxy
//! sends them. The token file is read again on every request: kubelet rotates it.

use std::path::PathBuf;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;

/// Where istiod is and how to authenticate to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IstiodTls {
    /// `host:port` to dial (`istiod.istio-system.svc:15012`).
    pub address: String,
    /// The DNS name istiod's certificate must carry (`istiod.istio-system.svc`).
    pub server_name: String,
    /// PEM roots istiod's certificate chains to.
    pub root_cert: PathBuf,
    /// The projected service-account token (audience `istio-ca`).
    pub token_file: PathBuf,
    /// Sent as the `clusterid` header (`ISTIO_META_CLUSTER_ID`).
    pub cluster_id: String,
}

/// A problem reading the local files a TLS connection needs.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The token file cannot be read (not mounted, or no projected token volume).
    #[error("cannot read the service account token {path}: {source}")]
    Token {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The token file is empty.
    #[error("the service account token {0} is empty")]
    EmptyToken(String),
    /// The root certificate file cannot be read or holds no certificate.
    #[error("istiod's root certificate {path}: {reason}")]
    Root {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// `server_name` is not a DNS name or IP address.
    #[error("{0:?} is not a valid server name for istiod")]
    ServerName(String),
}

impl IstiodTls {
    /// The bearer token, read now.
    pub fn token(&self) -> Result<String, CredentialError> {
        let path = self.token_file.display().to_string();
        let text =
            std::fs::read_to_string(&self.token_file).map_err(|source| CredentialError::Token {
                path: path.clone(),
                source,
            })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(CredentialError::EmptyToken(path));
        }
        Ok(token.to_string())
    }

    /// The roots from `root_cert`, PEM as read.
    pub fn roots_pem(&self) -> Result<Vec<u8>, CredentialError> {
        std::fs::read(&self.root_cert).map_err(|e| CredentialError::Root {
            path: self.root_cert.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// A rustls client configuration trusting only `root_cert`, offering ALPN `h2`.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, CredentialError> {
        let root_error = |reason: String| CredentialError::Root {
            path: self.root_cert.display().to_string(),
            reason,
        };
        let pem = self.roots_pem()?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut &pem[..]) {
            roots
                .add(cert.map_err(|e| root_error(e.to_string()))?)
                .map_err(|e| root_error(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(root_error("no CERTIFICATE block".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| root_error(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    /// Dials `address` and completes the TLS handshake, verifying `server_name`.
    pub async fn dial(
        &self,
    ) -> std::io::Result<TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>> {
        let other = |e: String| std::io::Error::other(e);
        let config = self.client_config().map_err(|e| other(e.to_string()))?;
        let name = ServerName::try_from(self.server_name.clone()).map_err(|_| {
            other(CredentialError::ServerName(self.server_name.clone()).to_string())
        })?;
        let tcp = tokio::net::TcpStream::connect(&self.address)
            .await
            .map_err(|e| other(format!("connecting to {}: {e}", self.address)))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| {
                other(format!(
                    "TLS handshake with {} (expecting {}): {e}",
                    self.address, self.server_name
                ))
            })?;
        Ok(TokioIo::new(tls))
    }
}

/// Adds the credentials istiod expects to every request: the bearer token and the cluster
/// id. Without a TLS target (pilot-agent's socket, plaintext tests) it adds nothing.
#[derive(Debug, Clone, Default)]
pub struct Credentials(pub Option<Arc<IstiodTls>>);

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(target) = &self.0 else {
            return Ok(req);
        };
        let token = target
            .token()
            .map_err(|e| tonic::Status::unauthenticated(e.to_string()))?;
        let bearer = format!("Bearer {token}")
            .parse()
            .map_err(|_| tonic::Status::unauthenticated("the token is not a valid header value"))?;
        req.metadata_mut().insert("authorization", bearer);
        if let Ok(id) = target.cluster_id.parse() {
            req.metadata_mut().insert("clusterid", id);
        }
        Ok(req)
    }
}
