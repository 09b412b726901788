//! Fetches and refreshes the keys of every RequestAuthentication `jwksUri`.
//!
//! A URI is fetched as soon as a configuration uses it, then every refresh interval
//! (`--jwks-refresh-interval`, Istio's default 20 minutes). A failed fetch is retried
//! after [`RETRY`] (or the interval, if shorter) and keeps the last good keys; until a URI
//! has been fetched once, tokens of its issuer are refused (401).
//!
//! `https://` URIs are verified against the system's trust store (rustls with ring; the
//! roots `rustls-native-certs` finds, as istiod uses the system roots), plus any PEM roots
//! given with `--jwks-ca-file`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use filters::authn::{JwksRegistry, RemoteJwks};
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::JwkSet;
use rustls::pki_types::ServerName;
use tokio::time::Instant;

/// Delay before retrying a failed fetch.
pub const RETRY: Duration = Duration::from_secs(1);
/// Longest a fetch may take (connect, TLS, response).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest JWKS document accepted.
pub const MAX_JWKS_BYTES: usize = 1 << 20;

/// Why a JWKS could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URI cannot be fetched (scheme, host).
    #[error("invalid jwksUri {uri}: {reason}")]
    Uri {
        /// The URI.
        uri: String,
        /// What is wrong.
        reason: String,
    },
    /// Connecting, TLS, or the HTTP exchange failed.
    #[error("fetching {uri}: {reason}")]
    Transport {
        /// The URI.
        uri: String,
        /// What went wrong.
        reason: String,
    },
    /// The server answered something other than 200.
    #[error("fetching {uri}: status {status}")]
    Status {
        /// The URI.
        uri: String,
        /// The status.
        status: StatusCode,
    },
    /// The document is not a JWKS.
    #[error("{uri} is not a JWKS: {reason}")]
    Document {
        /// The URI.
        uri: String,
        /// The parse error.
        reason: String,
    },
    /// The extra roots file is unusable.
    #[error("--jwks-ca-file {path}: {reason}")]
    Roots {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// Fetches JWKS documents over http and https.
#[derive(Clone)]
pub struct JwksClient {
    tls: tokio_rustls::TlsConnector,
}

impl JwksClient {
    /// A client trusting the system roots and the PEM certificates in `extra_roots`.
    pub fn new(extra_roots: Option<&Path>) -> Result<Self, FetchError> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot load the system trust store; https jwksUri needs --jwks-ca-file");
            Vec::new()
        });
        let (added, ignored) = roots.add_parsable_certificates(native);
        tracing::debug!(added, ignored, "system roots for jwksUri");
        if let Some(path) = extra_roots {
            let fail = |reason: String| FetchError::Roots {
                path: path.display().to_string(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
            let certs = rustls_pemfile::certs(&mut &pem[..])
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| fail(e.to_string()))?;
            if certs.is_empty() {
                return Err(fail("no certificate in the file".into()));
            }
            for c in certs {
                roots.add(c).map_err(|e| fail(e.to_string()))?;
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Roots {
            path: "<tls>".into(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Self {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// Fetches and parses the JWKS at `uri`.
    pub async fn fetch(&self, uri: &str) -> Result<JwkSet, FetchError> {
        match tokio::time::timeout(FETCH_TIMEOUT, self.fetch_inner(uri)).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Transport {
                uri: uri.into(),
                reason: format!("timed out after {FETCH_TIMEOUT:?}"),
            }),
        }
    }

    async fn fetch_inner(&self, uri: &str) -> Result<JwkSet, FetchError> {
        let bad = |reason: &str| FetchError::Uri {
            uri: uri.into(),
            reason: reason.into(),
        };
        let transport = |reason: String| FetchError::Transport {
            uri: uri.into(),
            reason,
        };
        let parsed: Uri = uri.parse().map_err(|_| bad("not a URI"))?;
        let https = match parsed.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("scheme must be http or https")),
        };
        let host = parsed.host().ok_or_else(|| bad("no host"))?.to_string();
        let port = parsed.port_u16().unwrap_or(if https { 443 } else { 80 });
        let bare_host = host.trim_matches(['[', ']']).to_string();
        let tcp = tokio::net::TcpStream::connect((bare_host.as_str(), port))
            .await
            .map_err(|e| transport(format!("connect {host}:{port}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let authority = parsed
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or(host.clone());
        let path = parsed
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let req = Request::get(path)
            .header(header::HOST, authority)
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, "waypoint")
            .body(Empty::<Bytes>::new())
            .map_err(|e| transport(e.to_string()))?;
        let resp = if https {
            let name = ServerName::try_from(bare_host.clone())
                .map_err(|e| bad(&format!("host is not a TLS server name: {e}")))?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| transport(format!("TLS: {e}")))?;
            send(TokioIo::new(tls), req).await
        } else {
            send(TokioIo::new(tcp), req).await
        }
        .map_err(transport)?;
        if resp.status() != StatusCode::OK {
            return Err(FetchError::Status {
                uri: uri.into(),
                status: resp.status(),
            });
        }
        let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| transport(format!("reading the body: {e}")))?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| FetchError::Document {
            uri: uri.into(),
            reason: e.to_string(),
        })
    }
}

async fn send<I>(
    io: I,
    req: Request<Empty<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))
}

async fn refresh_one(client: &JwksClient, entry: &RemoteJwks) -> bool {
    match client.fetch(entry.uri()).await {
        Ok(keys) => {
            tracing::info!(uri = entry.uri(), keys = keys.keys.len(), "JWKS fetched");
            entry.store(keys);
            true
        }
        Err(e) => {
            let kept = entry.keys().is_some();
            tracing::warn!(uri = entry.uri(), error = %e, keeping_last_keys = kept, "JWKS fetch failed");
            entry.fail(e.to_string());
            false
        }
    }
}

/// Keeps the keys of every URI in `registry` fresh, forever (a server task).
pub async fn run(registry: Arc<JwksRegistry>, client: JwksClient, refresh: Duration) {
    let retry = RETRY.min(refresh);
    let mut due: HashMap<String, Instant> = HashMap::new();
    loop {
        let now = Instant::now();
        let active = registry.active();
        due.retain(|uri, _| active.iter().any(|e| e.uri() == uri));
        let pending: Vec<&Arc<RemoteJwks>> = active
            .iter()
            .filter(|e| due.get(e.uri()).is_none_or(|d| *d <= now))
            .collect();
        let results =
            futures::future::join_all(pending.iter().map(|e| refresh_one(&client, e))).await;
        let done = Instant::now();
        for (e, ok) in pending.iter().zip(results) {
            due.insert(e.uri().to_string(), done + if ok { refresh } else { retry });
        }
        let next = due.values().min().copied().unwrap_or(done + refresh);
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = registry.added() => {}
        }
    }
}
