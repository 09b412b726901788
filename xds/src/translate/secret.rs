//! The secrets istiod serves a waypoint over its ADS stream for the names its clusters'
//! TLS contexts give (`SecretGen`, pilot/pkg/xds/sds.go): a CA bundle as a validation
//! context with inline `trusted_ca` (`toEnvoyCaSecret`: `configmap://<ns>/<name>-cacert`
//! and `kubernetes://<name>-cacert`), or a client certificate as a `tls_certificate` with
//! the chain and the key inline (`toEnvoyTLSSecret`: `kubernetes://<name>`). Anything else
//! in a secret (a CRL, an OCSP staple, a private-key provider, ...) is refused by field.

use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, CertificateValidationContext, Secret, TlsCertificate,
};
use filters::model::PrivateKeyPem;

use super::InvalidResource;

/// A secret from ADS, as the clusters' TLS uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdsSecret {
    /// Trusted roots (PEM), for verifying the server.
    CaBundle(String),
    /// The certificate the waypoint presents (`MUTUAL`).
    Certificate {
        /// Certificate chain (PEM), leaf first.
        chain: String,
        /// Private key (PEM).
        key: PrivateKeyPem,
    },
}

impl AdsSecret {
    /// Which kind of secret this is, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::CaBundle(_) => "a CA bundle",
            Self::Certificate { .. } => "a certificate and key",
        }
    }
}

/// Converts the secret `name`.
pub fn convert(s: &Secret, name: &str) -> Result<AdsSecret, InvalidResource> {
    let bad = |field: &str, reason: &str| InvalidResource::new("secret", name, field, reason);
    match &s.r#type {
        Some(secret::Type::ValidationContext(v)) => ca_bundle(v, name).map(AdsSecret::CaBundle),
        Some(secret::Type::TlsCertificate(t)) => certificate(t, name),
        _ => Err(bad(
            "type",
            "only a validation context (a CA bundle) or a tls_certificate is supported",
        )),
    }
}

/// The PEM text of an inline data source.
fn inline(d: Option<&DataSource>) -> Option<String> {
    match d?.specifier.as_ref()? {
        Specifier::InlineBytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Specifier::InlineString(t) => Some(t.clone()),
        _ => None,
    }
}

fn ca_bundle(v: &CertificateValidationContext, name: &str) -> Result<String, InvalidResource> {
    let bad = |field: &str, reason: &str| InvalidResource::new("secret", name, field, reason);
    let rest = CertificateValidationContext {
        trusted_ca: None,
        ..v.clone()
    };
    if rest.crl.is_some() {
        return Err(bad(
            "validation_context.crl",
            "certificate revocation lists are not supported (a Secret's ca.crl)",
        ));
    }
    if rest != Default::default() {
        return Err(bad(
            "validation_context",
            "only trusted_ca is supported (no CRL, SAN matchers or other checks in a CA secret)",
        ));
    }
    let Some(pem) = inline(v.trusted_ca.as_ref()) else {
        return Err(bad(
            "validation_context.trusted_ca",
            "an inline PEM bundle is required",
        ));
    };
    let mut found = 0;
    for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
        cert.map_err(|e| bad("validation_context.trusted_ca", &format!("not PEM: {e}")))?;
        found += 1;
    }
    if found == 0 {
        return Err(bad("validation_context.trusted_ca", "no CERTIFICATE block"));
    }
    Ok(pem)
}

fn certificate(t: &TlsCertificate, name: &str) -> Result<AdsSecret, InvalidResource> {
    let bad = |field: &str, reason: &str| InvalidResource::new("secret", name, field, reason);
    let unsupported = [
        ("ocsp_staple", t.ocsp_staple.is_some()),
        ("private_key_provider", t.private_key_provider.is_some()),
        ("password", t.password.is_some()),
        ("pkcs12", t.pkcs12.is_some()),
        ("watched_directory", t.watched_directory.is_some()),
        (
            "signed_certificate_timestamp",
            !t.signed_certificate_timestamp.is_empty(),
        ),
    ];
    if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
        return Err(bad(
            &format!("tls_certificate.{field}"),
            "not supported for a client certificate (the chain and key inline only)",
        ));
    }
    let Some(chain) = inline(t.certificate_chain.as_ref()) else {
        return Err(bad(
            "tls_certificate.certificate_chain",
            "an inline PEM chain is required",
        ));
    };
    let Some(key) = inline(t.private_key.as_ref()) else {
        return Err(bad(
            "tls_certificate.private_key",
            "an inline PEM key is required",
        ));
    };
    let mut found = 0;
    for cert in rustls_pemfile::certs(&mut chain.as_bytes()) {
        cert.map_err(|e| {
            bad(
                "tls_certificate.certificate_chain",
                &format!("not PEM: {e}"),
            )
        })?;
        found += 1;
    }
    if found == 0 {
        return Err(bad(
            "tls_certificate.certificate_chain",
            "no CERTIFICATE block",
        ));
    }
    let der = rustls_pemfile::private_key(&mut key.as_bytes())
        .map_err(|e| bad("tls_certificate.private_key", &format!("not PEM: {e}")))?
        .ok_or_else(|| bad("tls_certificate.private_key", "no PRIVATE KEY block"))?;
    rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| bad("tls_certificate.private_key", &format!("unusable key: {e}")))?;
    Ok(AdsSecret::Certificate {
        chain,
        key: PrivateKeyPem::new(key),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_pair() -> (String, String) {
        let ca = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["client.example".to_string()])
            .unwrap()
            .self_signed(&ca)
            .unwrap();
        (cert.pem(), ca.serialize_pem())
    }

    fn data(s: &str) -> Option<DataSource> {
        Some(DataSource {
            specifier: Some(Specifier::InlineBytes(s.as_bytes().to_vec())),
            ..Default::default()
        })
    }

    /// istiod's `toEnvoyTLSSecret` (pilot/pkg/xds/sds.go): the chain and key inline.
    fn tls_secret(chain: &str, key: &str) -> Secret {
        Secret {
            name: "kubernetes://creds".into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: data(chain),
                private_key: data(key),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn a_certificate_secret_is_its_chain_and_key() {
        let (chain, key) = pem_pair();
        let got = convert(&tls_secret(&chain, &key), "kubernetes://creds").unwrap();
        assert_eq!(
            got,
            AdsSecret::Certificate {
                chain: chain.clone(),
                key: PrivateKeyPem::new(key.clone())
            }
        );
        // Not a key.
        let e = convert(&tls_secret(&chain, &chain), "kubernetes://creds").unwrap_err();
        assert_eq!(e.field, "tls_certificate.private_key");
        // Fields istiod may add that the waypoint does not implement are named.
        let mut s = tls_secret(&chain, &key);
        if let Some(secret::Type::TlsCertificate(t)) = &mut s.r#type {
            t.ocsp_staple = data("staple");
        }
        let e = convert(&s, "kubernetes://creds").unwrap_err();
        assert_eq!(e.field, "tls_certificate.ocsp_staple");
        assert!(e.to_string().contains("kubernetes://creds"), "{e}");
    }

    #[test]
    fn a_ca_secret_with_a_crl_is_refused_by_field() {
        let (chain, _) = pem_pair();
        let mut v = CertificateValidationContext {
            trusted_ca: data(&chain),
            ..Default::default()
        };
        let s = |v: &CertificateValidationContext| Secret {
            name: "kubernetes://creds-cacert".into(),
            r#type: Some(secret::Type::ValidationContext(v.clone())),
        };
        assert_eq!(
            convert(&s(&v), "kubernetes://creds-cacert").unwrap(),
            AdsSecret::CaBundle(chain.clone())
        );
        v.crl = data("crl");
        let e = convert(&s(&v), "kubernetes://creds-cacert").unwrap_err();
        assert_eq!(e.field, "validation_context.crl");
    }
}
