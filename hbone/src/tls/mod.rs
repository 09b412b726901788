//! Certificates and SPIFFE identity: our own key pair and the mesh root bundle, both
//! reloadable, plus the verifiers used on the HBONE listener and for upstream HBONE.

mod ca;
mod client;
mod origination;
mod server;
mod store;
mod verified;

pub use ca::{DevCa, IssuedCert, SignedCsr};
pub use client::client_config;
pub use origination::{origination_config, revocation_lists, subject_alt_names};
pub use server::{server_resolver, SpiffeClientVerifier};
pub use store::{CertPaths, CertStore, Certs};

use filters::model::Identity;
use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

/// Why certificates could not be loaded or a peer could not be identified.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A PEM file holds nothing usable.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file (or `<memory>`).
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The certificate carries no SPIFFE URI SAN.
    #[error("certificate has no spiffe:// URI SAN")]
    NoSpiffeId,
    /// The certificate carries several URI SANs; an X.509-SVID has exactly one.
    #[error("certificate has {0} URI SANs; an X.509-SVID has exactly one")]
    SeveralUriSans(usize),
    /// The certificate does not parse as X.509.
    #[error("certificate does not parse: {0}")]
    BadCertificate(String),
    /// The SPIFFE URI SAN is malformed.
    #[error(transparent)]
    Identity(#[from] filters::model::InvalidIdentity),
    /// Generating certificates failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The SPIFFE identity in a certificate's URI SAN.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<Identity, TlsError> {
    identity_in(&parse(cert)?)
}

/// Parses a DER certificate.
fn parse<'a>(
    cert: &'a CertificateDer<'_>,
) -> Result<x509_parser::certificate::X509Certificate<'a>, TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    Ok(parsed)
}

/// The SPIFFE identity in a parsed certificate's URI SAN.
fn identity_in(
    parsed: &x509_parser::certificate::X509Certificate<'_>,
) -> Result<Identity, TlsError> {
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| TlsError::BadCertificate(e.to_string()))?
        .ok_or(TlsError::NoSpiffeId)?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    // The X.509-SVID specification: exactly one URI SAN, the SPIFFE ID.
    let uri = match uris.as_slice() {
        [one] if one.starts_with("spiffe://") => *one,
        [] | [_] => return Err(TlsError::NoSpiffeId),
        several => return Err(TlsError::SeveralUriSans(several.len())),
    };
    Ok(uri.parse()?)
}

/// Verifies a server chain against `roots` (server-auth usage, no name check: callers
/// check identities or SANs themselves).
fn verify_server_chain(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    roots: &rustls::RootCertStore,
    now: rustls::pki_types::UnixTime,
    revocation: Option<webpki::RevocationOptions<'_>>,
) -> Result<(), rustls::Error> {
    let cert = webpki::EndEntityCert::try_from(end_entity)
        .map_err(|e| rustls::Error::General(format!("bad server certificate: {e}")))?;
    cert.verify_for_usage(
        provider().signature_verification_algorithms.all,
        &roots.roots,
        intermediates,
        now,
        webpki::KeyUsage::server_auth(),
        revocation,
        None,
    )
    .map(|_| ())
    .map_err(|e| rustls::Error::General(format!("server certificate not trusted: {e}")))
}

/// A TLS 1.3 handshake signature, checked with the provider's algorithms.
fn tls13_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &rustls::DigitallySignedStruct,
) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &provider().signature_verification_algorithms,
    )
}

/// The signature schemes the provider verifies.
fn verify_schemes() -> Vec<rustls::SignatureScheme> {
    provider()
        .signature_verification_algorithms
        .supported_schemes()
}

/// HBONE is TLS 1.3 only: a TLS 1.2 signature is refused.
fn no_tls12() -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::General("HBONE requires TLS 1.3".into()))
}

/// The one crypto provider the waypoint uses (ring, as Pingora does).
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    // Built once: verifiers ask for it on every handshake.
    static PROVIDER: std::sync::OnceLock<std::sync::Arc<rustls::crypto::CryptoProvider>> =
        std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}
