//! The secrets istiod serves a waypoint over its ADS stream for the names its clusters'
//! TLS contexts give (`SecretGen`, pilot/pkg/xds/sds.go): a CA bundle as a validation
//! context with inline `trusted_ca` and, when the Secret has one (`ca.crl`, or `crl` next
//! to `cacert`), an inline `crl` (`toEnvoyCaSecret`: `configmap://<ns>/<name>-cacert` and
//! `kubernetes://<name>-cacert`), or a client certificate as a `tls_certificate` with the
//! chain and the key inline (`toEnvoyTLSSecret`: `kubernetes://<name>`). Anything else in
//! a secret (an OCSP staple, a private-key provider, ...) is refused by field.

use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, CertificateValidationContext, Secret, TlsCertificate,
};
use filters::model::PrivateKeyPem;

use super::InvalidResource;

/// A secret from ADS, as the clusters' TLS uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdsSecret {
    /// Trusted roots (PEM), for verifying the server, and the revocation lists (PEM) the
    /// server's chain is checked against.
    CaBundle {
        /// The CA certificates.
        roots: String,
        /// The CRLs, if the secret has any.
        crl: Option<String>,
    },
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
            Self::CaBundle { .. } => "a CA bundle",
            Self::Certificate { .. } => "a certificate and key",
        }
    }
}

/// Converts the secret `name`.
pub fn convert(s: &Secret, name: &str) -> Result<AdsSecret, InvalidResource> {
    let bad = |field: &str, reason: &str| InvalidResource::new("secret", name, field, reason);
    match &s.r#type {
        Some(secret::Type::ValidationContext(v)) => ca_bundle(v, name),
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

fn ca_bundle(v: &CertificateValidationContext, name: &str) -> Result<AdsSecret, InvalidResource> {
    let bad = |field: &str, reason: &str| InvalidResource::new("secret", name, field, reason);
    let rest = CertificateValidationContext {
        trusted_ca: None,
        crl: None,
        ..v.clone()
    };
    if rest != Default::default() {
        return Err(bad(
            "validation_context",
            "only trusted_ca and crl are supported (no SAN matchers or other checks in a CA secret)",
        ));
    }
    let crl = match &v.crl {
        None => None,
        Some(d) => {
            let Some(pem) = inline(Some(d)) else {
                return Err(bad(
                    "validation_context.crl",
                    "an inline PEM CRL is required",
                ));
            };
            super::upstream_tls::check_crls(&pem)
                .map_err(|e| bad("validation_context.crl", &e))?
                .then_some(pem)
        }
    };
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
    Ok(AdsSecret::CaBundle { roots: pem, crl })
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

    /// istiod's `toEnvoyCaSecret` (pilot/pkg/xds/sds.go): `ca.crt` as inline `trusted_ca`
    /// and, when the Secret has `ca.crl`, that as inline `crl`.
    #[test]
    fn a_ca_secret_carries_its_crl_checked_now() {
        let ca = ca_and_crl();
        let chain = ca.0.clone();
        let mut v = CertificateValidationContext {
            trusted_ca: data(&chain),
            ..Default::default()
        };
        let s = |v: &CertificateValidationContext| Secret {
            name: "kubernetes://creds-cacert".into(),
            r#type: Some(secret::Type::ValidationContext(v.clone())),
        };
        let name = "kubernetes://creds-cacert";
        assert_eq!(
            convert(&s(&v), name).unwrap(),
            AdsSecret::CaBundle {
                roots: chain.clone(),
                crl: None
            }
        );
        v.crl = data(&ca.1);
        assert_eq!(
            convert(&s(&v), name).unwrap(),
            AdsSecret::CaBundle {
                roots: chain.clone(),
                crl: Some(ca.1.clone())
            }
        );
        // An empty `ca.crl` is no list, as Envoy reads it.
        v.crl = data("");
        assert_eq!(
            convert(&s(&v), name).unwrap(),
            AdsSecret::CaBundle {
                roots: chain.clone(),
                crl: None
            }
        );
        // Text that is no CRL is refused by field, naming the secret.
        v.crl = data("crl");
        let e = convert(&s(&v), name).unwrap_err();
        assert_eq!(e.field, "validation_context.crl");
        assert!(e.to_string().contains("no X509 CRL block"), "{e}");
        // Other checks in a CA secret are not implemented.
        v.crl = None;
        v.only_verify_leaf_cert_crl = true;
        let e = convert(&s(&v), name).unwrap_err();
        assert_eq!(e.field, "validation_context");
    }

    /// A self-signed CA (PEM) and an empty CRL it signed (PEM).
    fn ca_and_crl() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = params.self_signed(&key).unwrap();
        let crl = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&ca, &key)
        .unwrap();
        (ca.pem(), crl.pem().unwrap())
    }
}
