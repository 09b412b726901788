//! A fresh key pair and a certificate signing request for a SPIFFE identity: the request's
//! only subject alternative name is the identity's URI, as Istio's CA requires.

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};

/// A signing request and the private key it is for.
pub struct Csr {
    /// The request, PEM.
    pub pem: String,
    /// The private key (ECDSA P-256, PKCS#8), PEM.
    pub key_pem: String,
}

/// Generates a key pair and a request for `spiffe_uri`
/// (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`).
pub fn generate(spiffe_uri: &str) -> Result<Csr, rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(spiffe_uri.try_into()?)];
    let request = params.serialize_request(&key)?;
    Ok(Csr {
        pem: request.pem()?,
        key_pem: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_carries_the_identity_as_its_only_san() {
        let csr = generate("spiffe://cluster.local/ns/default/sa/waypoint").unwrap();
        let parsed = rcgen::CertificateSigningRequestParams::from_pem(&csr.pem).unwrap();
        assert_eq!(parsed.params.subject_alt_names.len(), 1);
        match &parsed.params.subject_alt_names[0] {
            SanType::URI(u) => {
                assert_eq!(u.as_str(), "spiffe://cluster.local/ns/default/sa/waypoint")
            }
            other => panic!("{other:?}"),
        }
        assert!(csr.key_pem.contains("PRIVATE KEY"));
    }
}
