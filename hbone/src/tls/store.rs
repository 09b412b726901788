use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use filters::model::Identity;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

use super::{identity_of, provider, TlsError};

/// Where our certificate chain, key and the mesh roots live on disk.
#[derive(Debug, Clone)]
pub struct CertPaths {
    /// PEM certificate chain, leaf first.
    pub cert_chain: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM root bundle.
    pub root_cert: PathBuf,
}

/// One consistent set of key material.
pub struct Certs {
    /// Our chain and signing key.
    pub key: Arc<CertifiedKey>,
    /// The trusted roots.
    pub roots: Arc<RootCertStore>,
    /// Our SPIFFE identity (from our leaf certificate).
    pub identity: Identity,
    /// Verifies client chains against `roots`.
    pub(crate) client_verifier: Arc<dyn ClientCertVerifier>,
    pem: Vec<u8>,
    /// Our chain, PEM (for the admin config dump).
    pub chain_pem: String,
    /// The roots, PEM.
    pub roots_pem: String,
}

impl Certs {
    /// Builds key material from PEM text.
    pub fn from_pem(chain: &[u8], key: &[u8], roots_pem: &[u8]) -> Result<Self, TlsError> {
        let invalid = |what: &str, reason: String| TlsError::Invalid {
            path: what.to_string(),
            reason,
        };
        let chain_der: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &chain[..])
            .collect::<Result<_, _>>()
            .map_err(|e| invalid("certificate chain", e.to_string()))?;
        let leaf = chain_der
            .first()
            .ok_or_else(|| invalid("certificate chain", "no CERTIFICATE block".into()))?;
        let identity = identity_of(leaf)?;
        let key_der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key[..])
            .map_err(|e| invalid("private key", e.to_string()))?
            .ok_or_else(|| invalid("private key", "no PRIVATE KEY block".into()))?;
        let signer = provider()
            .key_provider
            .load_private_key(key_der)
            .map_err(|e| invalid("private key", e.to_string()))?;
        let certified = CertifiedKey::new(chain_der, signer);
        certified.keys_match().map_err(|e| {
            invalid(
                "private key",
                format!("does not match the certificate: {e}"),
            )
        })?;
        let mut store = RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut &roots_pem[..]) {
            let cert = cert.map_err(|e| invalid("root certificates", e.to_string()))?;
            store
                .add(cert)
                .map_err(|e| invalid("root certificates", e.to_string()))?;
        }
        if store.is_empty() {
            return Err(invalid("root certificates", "no CERTIFICATE block".into()));
        }
        let roots = Arc::new(store);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| invalid("root certificates", e.to_string()))?;
        let chain_pem = String::from_utf8_lossy(chain).into_owned();
        let roots_text = String::from_utf8_lossy(roots_pem).into_owned();
        let pem = [chain, key, roots_pem].concat();
        Ok(Self {
            key: Arc::new(certified),
            roots,
            identity,
            client_verifier,
            pem,
            chain_pem,
            roots_pem: roots_text,
        })
    }
}

/// Our current key material, swapped atomically when the files change.
pub struct CertStore {
    paths: Option<CertPaths>,
    current: ArcSwap<Certs>,
}

impl CertStore {
    /// Loads the files at `paths`.
    pub fn load(paths: CertPaths) -> Result<Self, TlsError> {
        let certs = read(&paths)?;
        Ok(Self {
            paths: Some(paths),
            current: ArcSwap::from_pointee(certs),
        })
    }

    /// Wraps in-memory key material (tests, the demo); never reloads.
    pub fn fixed(certs: Certs) -> Self {
        Self {
            paths: None,
            current: ArcSwap::from_pointee(certs),
        }
    }

    /// Replaces the key material (certificates from SDS): new connections use it,
    /// established ones keep theirs.
    pub fn set(&self, certs: Certs) {
        self.current.store(Arc::new(certs));
    }

    /// The current key material.
    pub fn current(&self) -> Arc<Certs> {
        self.current.load_full()
    }

    /// Re-reads the files; swaps in the new material if it changed and is valid.
    /// Returns whether anything changed.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let Some(paths) = &self.paths else {
            return Ok(false);
        };
        let files = read_files(paths)?;
        // Unchanged files (the common case, every interval) are not parsed again.
        if files.concat() == self.current.load().pem {
            return Ok(false);
        }
        self.current.store(Arc::new(parse(paths, &files)?));
        Ok(true)
    }

    /// Reloads every `interval` until dropped; a broken file keeps the current material.
    pub async fn watch(self: Arc<Self>, interval: std::time::Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_error = None;
        loop {
            ticker.tick().await;
            match self.reload() {
                Ok(true) => {
                    last_error = None;
                    tracing::info!(identity = %self.current().identity, "certificates reloaded");
                }
                Ok(false) => last_error = None,
                Err(e) => {
                    let msg = e.to_string();
                    if last_error.as_ref() != Some(&msg) {
                        tracing::error!(error = %msg, "certificate reload failed; keeping the current certificates");
                    }
                    last_error = Some(msg);
                }
            }
        }
    }
}

fn read(paths: &CertPaths) -> Result<Certs, TlsError> {
    parse(paths, &read_files(paths)?)
}

/// The chain, key and roots files' bytes, in that order.
fn read_files(paths: &CertPaths) -> Result<[Vec<u8>; 3], TlsError> {
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    Ok([
        read(&paths.cert_chain)?,
        read(&paths.key)?,
        read(&paths.root_cert)?,
    ])
}

fn parse(paths: &CertPaths, [chain, key, roots]: &[Vec<u8>; 3]) -> Result<Certs, TlsError> {
    Certs::from_pem(chain, key, roots).map_err(|e| match e {
        TlsError::Invalid { path, reason } => TlsError::Invalid {
            path: match path.as_str() {
                "certificate chain" => paths.cert_chain.display().to_string(),
                "private key" => paths.key.display().to_string(),
                _ => paths.root_cert.display().to_string(),
            },
            reason,
        },
        other => other,
    })
}

impl CertStore {
    /// Installs a rotated key pair and root bundle (from SDS, say) for the same identity;
    /// a certificate for another identity is refused and the current one kept.
    pub fn rotate(&self, chain: &[u8], key: &[u8], roots: &[u8]) -> Result<(), TlsError> {
        let certs = Certs::from_pem(chain, key, roots)?;
        let current = self.current();
        if certs.identity != current.identity {
            return Err(TlsError::Invalid {
                path: "<sds>".into(),
                reason: format!(
                    "the new certificate is for {}, not {}",
                    certs.identity, current.identity
                ),
            });
        }
        self.set(certs);
        Ok(())
    }
}
