use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

use filters::model::Identity;

use super::verified::VerifiedChains;
use super::{identity_of, CertStore, TlsError};

/// Serves whatever certificate the store holds now, so rotation needs no new listener.
#[derive(Debug)]
struct StoreResolver(Arc<CertStore>);

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("identity", &self.current().identity.to_string())
            .finish()
    }
}

impl ResolvesServerCert for StoreResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().key.clone())
    }
}

/// The HBONE listener's certificate resolver.
pub fn server_resolver(store: Arc<CertStore>) -> Arc<dyn ResolvesServerCert> {
    Arc::new(StoreResolver(store))
}

/// Requires a client certificate that chains to the current roots and carries a SPIFFE
/// identity in our trust domain. TLS 1.2 client authentication is refused, which makes
/// mutual TLS on the listener TLS 1.3 only.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    store: Arc<CertStore>,
    trust_domain: String,
    verified: VerifiedChains,
}

impl SpiffeClientVerifier {
    /// A verifier accepting peers of `trust_domain`.
    pub fn new(store: Arc<CertStore>, trust_domain: String) -> Arc<Self> {
        Arc::new(Self {
            store,
            trust_domain,
            verified: VerifiedChains::default(),
        })
    }

    /// The SPIFFE identity of a client certificate this verifier accepted, taken from its
    /// verified-chain cache (so a handshake parses the certificate once, not twice), or
    /// parsed when the cache no longer holds it.
    pub fn peer_identity(&self, end_entity: &[u8]) -> Result<Identity, TlsError> {
        match self.verified.identity(end_entity) {
            Some(id) => Ok(id),
            None => identity_of(&CertificateDer::from(end_entity)),
        }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let certs = self.store.current();
        let id = match self.verified.get(&certs, end_entity, intermediates, now) {
            Some(id) => id,
            None => {
                certs
                    .client_verifier
                    .verify_client_cert(end_entity, intermediates, now)?;
                self.verified
                    .insert(&certs, end_entity, intermediates)
                    .map_err(|e| Error::General(e.to_string()))?
            }
        };
        if id.trust_domain != self.trust_domain {
            return Err(Error::General(format!(
                "peer {id} is not in trust domain {}",
                self.trust_domain
            )));
        }
        Ok(ClientCertVerified::assertion())
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
        self.store
            .current()
            .client_verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.store
            .current()
            .client_verifier
            .supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::DevCa;

    #[test]
    fn peer_identity_is_parsed_when_not_cached() {
        let ca = DevCa::new("test").expect("ca");
        let id = Identity::new("cluster.local", "default", "sleep");
        let certs = ca.issue(&id).expect("issue").certs().expect("certs");
        let leaf = certs.key.cert[0].clone();
        let verifier =
            SpiffeClientVerifier::new(Arc::new(CertStore::fixed(certs)), "cluster.local".into());
        assert_eq!(verifier.peer_identity(leaf.as_ref()).expect("parsed"), id);
        let err = verifier.peer_identity(b"not a certificate").unwrap_err();
        assert!(err.to_string().contains("does not parse"), "{err}");
    }
}
