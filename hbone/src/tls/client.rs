use std::sync::Arc;

use filters::model::Identity;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};

use super::{identity_of, provider, CertStore};

/// A TLS 1.3 client configuration for one HBONE peer: presents our current certificate,
/// verifies the peer's chain against the current roots and requires its SPIFFE identity to
/// be `expected`. ALPN `h2`.
pub fn client_config(store: Arc<CertStore>, expected: Identity) -> Arc<ClientConfig> {
    let roots = store.current().roots.clone();
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier { roots, expected }))
        .with_client_cert_resolver(Arc::new(StoreClientResolver(store)));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

#[derive(Debug)]
struct StoreClientResolver(Arc<CertStore>);

impl ResolvesClientCert for StoreClientResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies a server chain against `roots` and its SPIFFE identity against `expected`
/// (only its trust domain when `expected` has no service account).
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    expected: Identity,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        super::verify_server_chain(end_entity, intermediates, &self.roots, now, None)?;
        let id = identity_of(end_entity).map_err(|e| Error::General(e.to_string()))?;
        // An expected identity without a service account (endpoints from xDS, which do not
        // carry it) accepts any identity of the trust domain, as Istio's connect_originate
        // cluster does.
        let trust_domain_only = self.expected.service_account.is_empty();
        if trust_domain_only && id.trust_domain == self.expected.trust_domain {
            return Ok(ServerCertVerified::assertion());
        }
        if id != self.expected {
            return Err(Error::General(format!(
                "peer identity {id} is not the expected {}",
                self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        super::no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        super::tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        super::verify_schemes()
    }
}
