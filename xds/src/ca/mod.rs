//! Certificates straight from istiod's CA, without pilot-agent (as ztunnel does): a key
//! pair and CSR for the workload's SPIFFE identity, `CreateCertificate` over TLS with the
//! service-account token, the returned chain installed through a
//! [`SecretSink`](crate::ads::sds::SecretSink), and renewal at half of the lifetime
//! ([`rotate`]).

pub mod csr;
pub mod proto;
pub mod rotate;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

use crate::ads::connect::{self, ConnectError, XdsAddress};
use crate::ads::sds::KeyMaterial;
use crate::ads::tls::{CredentialError, IstiodTls};
use proto::{IstioCertificateRequest, IstioCertificateResponse};

/// Why a certificate could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The token or the root certificate cannot be read.
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    /// The key pair or request could not be made.
    #[error("creating the certificate request: {0}")]
    Csr(#[from] rcgen::Error),
    /// The CA cannot be reached (connection or TLS handshake).
    #[error("the CA at {address} is unreachable: {source}")]
    Unreachable {
        /// The CA.
        address: String,
        /// Why.
        source: ConnectError,
    },
    /// The CA answered with an error (a refused token or CSR).
    #[error("the CA at {address} refused the certificate request: {code:?}: {message}")]
    Refused {
        /// The CA.
        address: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// The CA's message.
        message: String,
    },
    /// The CA's answer cannot be used.
    #[error("the CA at {address} returned an unusable certificate: {reason}")]
    Invalid {
        /// The CA.
        address: String,
        /// What is wrong.
        reason: String,
    },
}

/// A certificate the CA issued: the key material and its validity.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Chain (leaf first, without the root), key and roots, PEM.
    pub material: KeyMaterial,
    /// The leaf's `notBefore`.
    pub not_before: SystemTime,
    /// The leaf's `notAfter`.
    pub not_after: SystemTime,
    /// The leaf's serial number, hex.
    pub serial: String,
}

impl Issued {
    /// When to renew: half of the lifetime, as istio-agent does by default.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + lifetime / 2
    }
}

/// The CA client.
#[derive(Debug, Clone)]
pub struct CaClient {
    /// istiod's CA (usually the xDS server itself, on 15012).
    pub target: Arc<IstiodTls>,
    /// The identity to request, `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
    pub identity: String,
    /// Requested lifetime (istio-agent's `SECRET_TTL`, 24 h by default).
    pub validity: Duration,
}

impl CaClient {
    fn address(&self) -> String {
        XdsAddress::Tls(self.target.clone()).to_string()
    }

    /// One round trip: a new key and CSR, signed by the CA, checked and returned.
    pub async fn issue(&self) -> Result<Issued, CaError> {
        let address = self.address();
        let token = self.target.token()?;
        let csr = csr::generate(&self.identity)?;
        let channel = connect::channel(&XdsAddress::Tls(self.target.clone()))
            .await
            .map_err(|source| CaError::Unreachable {
                address: address.clone(),
                source,
            })?;
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: csr.pem.clone(),
            validity_duration: self.validity.as_secs() as i64,
            metadata: None,
        });
        let refused = |status: tonic::Status| CaError::Refused {
            address: address.clone(),
            code: status.code(),
            message: status.message().to_string(),
        };
        let header = format!("Bearer {token}").parse().map_err(|_| {
            refused(tonic::Status::unauthenticated(
                "token is not a header value",
            ))
        })?;
        request.metadata_mut().insert("authorization", header);
        if let Ok(id) = self.target.cluster_id.parse() {
            request.metadata_mut().insert("clusterid", id);
        }
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.map_err(|e| CaError::Unreachable {
            address: address.clone(),
            source: ConnectError::from(e),
        })?;
        let response: IstioCertificateResponse = grpc
            .unary(
                request,
                http::uri::PathAndQuery::from_static(proto::CREATE_CERTIFICATE),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .map_err(refused)?
            .into_inner();
        self.accept(response, csr.key_pem)
    }

    /// Checks the CA's chain: a leaf for our identity, then the rest; the last certificate
    /// is the root (istiod always appends it).
    fn accept(&self, response: IstioCertificateResponse, key: String) -> Result<Issued, CaError> {
        let invalid = |reason: String| CaError::Invalid {
            address: self.address(),
            reason,
        };
        let chain = response.cert_chain;
        let (leaf, root) = match (chain.first(), chain.last()) {
            (Some(leaf), Some(root)) if chain.len() >= 2 => (leaf, root),
            _ => {
                return Err(invalid(format!(
                    "{} certificates; expected the leaf and the root",
                    chain.len()
                )))
            }
        };
        let der = rustls_pemfile::certs(&mut leaf.as_bytes())
            .next()
            .ok_or_else(|| invalid("the leaf is not PEM".into()))?
            .map_err(|e| invalid(format!("the leaf is not PEM: {e}")))?;
        let (_, cert) = X509Certificate::from_der(&der)
            .map_err(|e| invalid(format!("the leaf does not parse: {e}")))?;
        let uris: Vec<String> = cert
            .extensions()
            .iter()
            .filter_map(|ext| match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => Some(san),
                _ => None,
            })
            .flat_map(|san| san.general_names.iter())
            .filter_map(|name| match name {
                GeneralName::URI(u) => Some(u.to_string()),
                _ => None,
            })
            .collect();
        if uris != [self.identity.clone()] {
            return Err(invalid(format!(
                "the leaf is for {uris:?}, not {}",
                self.identity
            )));
        }
        let at = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
        let validity = cert.validity();
        let issued = Issued {
            not_before: at(validity.not_before.timestamp()),
            not_after: at(validity.not_after.timestamp()),
            serial: cert.raw_serial_as_string(),
            material: KeyMaterial {
                chain: pem_join(&chain[..chain.len() - 1]),
                key: key.into_bytes(),
                roots: pem_join(std::slice::from_ref(root)),
            },
        };
        Ok(issued)
    }
}

/// PEM blocks one after another, each ending in a newline.
fn pem_join(blocks: &[String]) -> Vec<u8> {
    let mut out = String::new();
    for b in blocks {
        out.push_str(b.trim_end());
        out.push('\n');
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests;
