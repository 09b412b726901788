//! TLS the waypoint originates to an application inside a tunnel (DestinationRule `tls`):
//! not SPIFFE, but ordinary server certificates, verified as Envoy's upstream TLS context
//! says: the chain against the configured roots (or not at all), then the SANs against the
//! listed ones, or against the SNI (`auto_san_validation`). Envoy does not check the SNI
//! against the certificate otherwise, and neither does this.
//!
//! With revocation lists (`crl`), as Envoy (BoringSSL with `X509_V_FLAG_CRL_CHECK_ALL`)
//! does by default: every certificate of the chain below the trust anchor must be covered
//! by a CRL of its issuer (a certificate whose status is unknown fails, revoked or not),
//! must not be listed in it, and an expired CRL (past its `nextUpdate`) fails. With
//! `only_verify_leaf_cert_crl` only the server's own certificate is checked.

use std::sync::Arc;

use filters::model::{ClientCertificate, Crl, TlsRoots, UpstreamTls};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};
use x509_parser::extensions::GeneralName;

use super::{parse, provider, TlsError};

/// A client configuration for `tls`, reading its files now. The SNI is set per connection.
pub fn origination_config(tls: &UpstreamTls) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match &tls.roots {
        TlsRoots::Insecure => None,
        TlsRoots::System => Some(system_roots()),
        TlsRoots::File(path) => Some(roots_from(&read(path)?, &path.display().to_string())?),
        TlsRoots::Pem(pem) => Some(roots_from(pem.as_bytes(), "<inline>")?),
    };
    let crls = match &tls.crl {
        None => Vec::new(),
        Some(Crl::File(path)) => revocation_lists(&read(path)?, &path.display().to_string())?,
        Some(Crl::Pem(pem)) => revocation_lists(pem.as_bytes(), "<inline CRL>")?,
    };
    let verifier = Arc::new(AppServerVerifier {
        roots,
        crls,
        crl_depth: if tls.crl_leaf_only {
            webpki::RevocationCheckDepth::EndEntity
        } else {
            webpki::RevocationCheckDepth::Chain
        },
        subject_alt_names: tls.subject_alt_names.clone(),
        auto_san: tls.auto_san_validation,
    });
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("<tls>", e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match &tls.client_certificate {
        None => builder.with_no_client_auth(),
        Some(c) => {
            let (chain, key) = client_pair(c)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| invalid(&key_label(c), e.to_string()))?
        }
    };
    config.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}

/// Where a client certificate's key comes from, for errors.
fn key_label(c: &ClientCertificate) -> String {
    match c {
        ClientCertificate::Files { private_key, .. } => private_key.display().to_string(),
        ClientCertificate::Pem { .. } => "<inline private key>".into(),
    }
}

/// The certificate chain and key of `c`, from its files or inline PEM.
fn client_pair(
    c: &ClientCertificate,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let (chain_pem, chain_label, key_pem) = match c {
        ClientCertificate::Files {
            certificate,
            private_key,
        } => (
            read(certificate)?,
            certificate.display().to_string(),
            read(private_key)?,
        ),
        ClientCertificate::Pem { chain, key } => (
            chain.as_bytes().to_vec(),
            "<inline certificate chain>".to_string(),
            key.expose().as_bytes().to_vec(),
        ),
    };
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &chain_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(&chain_label, e.to_string()))?;
    if chain.is_empty() {
        return Err(invalid(&chain_label, "no CERTIFICATE block".into()));
    }
    let what = key_label(c);
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| invalid(&what, e.to_string()))?
        .ok_or_else(|| invalid(&what, "no PRIVATE KEY block".into()))?;
    Ok((chain, key))
}

fn invalid(path: &str, reason: String) -> TlsError {
    TlsError::Invalid {
        path: path.to_string(),
        reason,
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn roots_from(pem: &[u8], what: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        let cert = cert.map_err(|e| invalid(what, e.to_string()))?;
        store.add(cert).map_err(|e| invalid(what, e.to_string()))?;
    }
    if store.is_empty() {
        return Err(invalid(what, "no CERTIFICATE block".into()));
    }
    Ok(Arc::new(store))
}

/// The certificate revocation lists of a PEM text (every `X509 CRL` block). Empty text is
/// no list, as Envoy reads an empty `crl`; text without a CRL block, or a CRL webpki cannot
/// use (a v1 CRL without extensions, a delta CRL), is an error.
pub fn revocation_lists(
    pem: &[u8],
    what: &str,
) -> Result<Vec<webpki::CertRevocationList<'static>>, TlsError> {
    if pem.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let mut crls = Vec::new();
    for der in rustls_pemfile::crls(&mut &pem[..]) {
        let der = der.map_err(|e| invalid(what, e.to_string()))?;
        let crl = webpki::OwnedCertRevocationList::from_der(der.as_ref())
            .map_err(|e| invalid(what, format!("unusable CRL: {e}")))?;
        crls.push(webpki::CertRevocationList::Owned(crl));
    }
    if crls.is_empty() {
        return Err(invalid(what, "no X509 CRL block".into()));
    }
    Ok(crls)
}

/// The operating system's roots, loaded once.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: std::sync::OnceLock<Arc<RootCertStore>> = std::sync::OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut store = RootCertStore::empty();
            match rustls_native_certs::load_native_certs() {
                Ok(certs) => {
                    store.add_parsable_certificates(certs);
                }
                Err(e) => tracing::warn!(error = %e, "cannot load the system trust store"),
            }
            Arc::new(store)
        })
        .clone()
}

/// The SANs of a certificate as text: DNS names, URIs and IP addresses.
pub fn subject_alt_names(cert: &CertificateDer<'_>) -> Result<Vec<String>, TlsError> {
    let parsed = parse(cert)?;
    let Some(san) = parsed
        .subject_alternative_name()
        .map_err(|e| TlsError::BadCertificate(e.to_string()))?
    else {
        return Ok(Vec::new());
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            GeneralName::URI(u) => Some(u.to_string()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(*b).ok()?).to_string()),
                16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(*b).ok()?).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect())
}

/// Whether DNS SAN `san` covers `name` (exactly, or as a `*.` wildcard of one label).
fn dns_matches(san: &str, name: &str) -> bool {
    if san.eq_ignore_ascii_case(name) {
        return true;
    }
    match (san.strip_prefix("*."), name.split_once('.')) {
        (Some(suffix), Some((label, rest))) => {
            !label.is_empty() && rest.eq_ignore_ascii_case(suffix)
        }
        _ => false,
    }
}

#[derive(Debug)]
struct AppServerVerifier {
    roots: Option<Arc<RootCertStore>>,
    /// Revocation lists to check the chain against (none: no revocation check).
    crls: Vec<webpki::CertRevocationList<'static>>,
    /// How much of the chain the lists must cover.
    crl_depth: webpki::RevocationCheckDepth,
    subject_alt_names: Vec<String>,
    auto_san: bool,
}

impl ServerCertVerifier for AppServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let Some(roots) = &self.roots else {
            return Ok(ServerCertVerified::assertion());
        };
        let crls: Vec<&webpki::CertRevocationList<'_>> = self.crls.iter().collect();
        let revocation = webpki::RevocationOptionsBuilder::new(&crls).ok().map(|b| {
            b.with_depth(self.crl_depth)
                .with_status_policy(webpki::UnknownStatusPolicy::Deny)
                .with_expiration_policy(webpki::ExpirationPolicy::Enforce)
                .build()
        });
        super::verify_server_chain(end_entity, intermediates, roots, now, revocation)?;
        let sans = subject_alt_names(end_entity).map_err(|e| Error::General(e.to_string()))?;
        if !self.subject_alt_names.is_empty() {
            if sans.iter().any(|s| self.subject_alt_names.contains(s)) {
                return Ok(ServerCertVerified::assertion());
            }
            return Err(Error::General(format!(
                "server certificate SANs {sans:?} match none of {:?}",
                self.subject_alt_names
            )));
        }
        if self.auto_san {
            let name = match server_name {
                ServerName::DnsName(d) => d.as_ref().to_string(),
                other => other.to_str().into_owned(),
            };
            if !sans.iter().any(|s| dns_matches(s, &name)) {
                return Err(Error::General(format!(
                    "server certificate SANs {sans:?} do not cover {name}"
                )));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
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

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, IsCa, KeyIdMethod,
        KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
    };

    struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    fn ca_params(name: &str) -> CertificateParams {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, name.to_string());
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p
    }

    /// A CRL of `ca` listing `serials`, valid until `next_year`.
    fn crl(ca: &Ca, serials: &[u64], next_year: i32) -> String {
        CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(next_year, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: rcgen::date_time_ymd(2020, 6, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&ca.cert, &ca.key)
        .unwrap()
        .pem()
        .unwrap()
    }

    /// A root, an intermediate it signed (serial 5), and a leaf the intermediate signed
    /// (serial 7).
    struct Pki {
        root: Ca,
        intermediate: Ca,
        intermediate_der: CertificateDer<'static>,
        leaf_der: CertificateDer<'static>,
    }

    fn pki() -> Pki {
        let root_key = KeyPair::generate().unwrap();
        let root = Ca {
            cert: ca_params("root").self_signed(&root_key).unwrap(),
            key: root_key,
        };
        let inter_key = KeyPair::generate().unwrap();
        let mut params = ca_params("intermediate");
        params.serial_number = Some(SerialNumber::from(5u64));
        let inter_cert = params.signed_by(&inter_key, &root.cert, &root.key).unwrap();
        let intermediate = Ca {
            cert: inter_cert,
            key: inter_key,
        };
        let leaf_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["app.example.test".to_string()]).unwrap();
        params.serial_number = Some(SerialNumber::from(7u64));
        let leaf = params
            .signed_by(&leaf_key, &intermediate.cert, &intermediate.key)
            .unwrap();
        Pki {
            intermediate_der: intermediate.cert.der().clone(),
            leaf_der: leaf.der().clone(),
            root,
            intermediate,
        }
    }

    /// Verifies the leaf (with the intermediate) against the root and the CRLs of `pems`.
    fn check(pki: &Pki, pems: &[String], leaf_only: bool) -> Result<(), Error> {
        let mut roots = RootCertStore::empty();
        roots.add(pki.root.cert.der().clone()).unwrap();
        let crls = pems
            .iter()
            .flat_map(|p| revocation_lists(p.as_bytes(), "test").unwrap())
            .collect();
        let verifier = AppServerVerifier {
            roots: Some(Arc::new(roots)),
            crls,
            crl_depth: if leaf_only {
                webpki::RevocationCheckDepth::EndEntity
            } else {
                webpki::RevocationCheckDepth::Chain
            },
            subject_alt_names: Vec::new(),
            auto_san: false,
        };
        verifier
            .verify_server_cert(
                &pki.leaf_der,
                std::slice::from_ref(&pki.intermediate_der),
                &ServerName::try_from("app.example.test").unwrap(),
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
    }

    #[test]
    fn every_ca_of_the_chain_needs_a_crl_unless_only_the_leaf_is_checked() {
        let pki = pki();
        let inter_empty = crl(&pki.intermediate, &[], 2099);
        let root_empty = crl(&pki.root, &[], 2099);
        // No CRL: no revocation check.
        check(&pki, &[], false).unwrap();
        // Both CAs' lists, neither listing the chain: good.
        check(&pki, &[inter_empty.clone(), root_empty.clone()], false).unwrap();
        // Only the intermediate's list: the intermediate's status is unknown, which fails
        // as in Envoy (a CRL for every CA of the chain)...
        let e = check(&pki, std::slice::from_ref(&inter_empty), false).unwrap_err();
        assert!(e.to_string().contains("UnknownRevocationStatus"), "{e}");
        // ...unless only the leaf is checked (`only_verify_leaf_cert_crl`).
        check(&pki, std::slice::from_ref(&inter_empty), true).unwrap();
        // The leaf listed by its issuer: revoked.
        let revoking = crl(&pki.intermediate, &[7], 2099);
        let e = check(&pki, &[revoking.clone(), root_empty.clone()], false).unwrap_err();
        assert!(e.to_string().contains("CertRevoked"), "{e}");
        assert!(check(&pki, std::slice::from_ref(&revoking), true).is_err());
        // The intermediate listed by the root: revoked, but not when only the leaf counts.
        let root_revoking = crl(&pki.root, &[5], 2099);
        let e = check(&pki, &[inter_empty.clone(), root_revoking.clone()], false).unwrap_err();
        assert!(e.to_string().contains("CertRevoked"), "{e}");
        check(&pki, &[inter_empty.clone(), root_revoking], true).unwrap();
        // An expired list fails.
        let expired = crl(&pki.intermediate, &[], 2021);
        let e = check(&pki, &[expired, root_empty.clone()], false).unwrap_err();
        assert!(e.to_string().contains("CrlExpired"), "{e}");
        // Several lists in one PEM text are all read.
        let both = format!("{inter_empty}{root_empty}");
        assert_eq!(revocation_lists(both.as_bytes(), "test").unwrap().len(), 2);
        check(&pki, &[both], false).unwrap();
    }

    #[test]
    fn empty_text_is_no_list_and_other_text_is_refused() {
        assert!(revocation_lists(b" \n", "x").unwrap().is_empty());
        let e = revocation_lists(b"not a crl", "x").unwrap_err();
        assert!(e.to_string().contains("no X509 CRL block"), "{e}");
    }

    #[test]
    fn wildcards_cover_one_label() {
        assert!(super::dns_matches("*.example.com", "a.example.com"));
        assert!(!super::dns_matches("*.example.com", "a.b.example.com"));
        assert!(!super::dns_matches("*.example.com", "example.com"));
        assert!(super::dns_matches("A.example.com", "a.example.com"));
    }
}
