use std::path::Path;

use filters::model::Identity;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

use super::{Certs, TlsError};

/// A development certificate authority issuing SPIFFE workload certificates, for local
/// use, the demo and tests. Not for production: keys are unencrypted PEM.
pub struct DevCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A leaf certificate issued by [`DevCa`].
pub struct IssuedCert {
    /// PEM chain (leaf only; the root is not included, as istio-agent does).
    pub chain_pem: String,
    /// PEM PKCS#8 private key.
    pub key_pem: String,
    /// PEM root certificate of the issuing CA.
    pub root_pem: String,
}

impl IssuedCert {
    /// Key material ready for a [`super::CertStore`].
    pub fn certs(&self) -> Result<Certs, TlsError> {
        Certs::from_pem(
            self.chain_pem.as_bytes(),
            self.key_pem.as_bytes(),
            self.root_pem.as_bytes(),
        )
    }
}

impl DevCa {
    /// A new self-signed root.
    pub fn new(name: &str) -> Result<Self, TlsError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, name);
        dn.push(DnType::CommonName, format!("{name} root CA"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self { cert, key })
    }

    /// Loads a root written by [`DevCa::write_root`].
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| TlsError::Read {
                path: path.display().to_string(),
                source,
            })
        };
        let key = KeyPair::from_pem(&read("root-key.pem")?)?;
        let params = CertificateParams::from_ca_cert_pem(&read("root-cert.pem")?)?;
        let cert = params.self_signed(&key)?;
        Ok(Self { cert, key })
    }

    /// The root certificate, PEM.
    pub fn root_pem(&self) -> String {
        self.cert.pem()
    }

    /// Writes `root-cert.pem` and `root-key.pem` into `dir`.
    pub fn write_root(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("root-cert.pem"), self.root_pem())?;
        std::fs::write(dir.join("root-key.pem"), self.key.serialize_pem())
    }

    /// Issues a leaf for `identity` (URI SAN), usable for both TLS client and server auth.
    pub fn issue(&self, identity: &Identity) -> Result<IssuedCert, TlsError> {
        self.issue_uri(&identity.to_string())
    }

    /// Issues a leaf with an arbitrary URI SAN (tests use this for malformed identities).
    pub fn issue_uri(&self, uri: &str) -> Result<IssuedCert, TlsError> {
        self.issue_sans(vec![SanType::URI(uri.try_into()?)])
    }

    /// Issues a leaf for `identity` that also carries the DNS name `dns`, for peers that
    /// check host names rather than SPIFFE identities (the benchmark's nginx upstream).
    pub fn issue_with_dns(&self, identity: &Identity, dns: &str) -> Result<IssuedCert, TlsError> {
        self.issue_sans(vec![
            SanType::URI(identity.to_string().as_str().try_into()?),
            SanType::DnsName(dns.try_into()?),
        ])
    }

    /// Issues a leaf with several URI SANs (not an X.509-SVID; tests check it is refused).
    pub fn issue_uris(&self, uris: &[&str]) -> Result<IssuedCert, TlsError> {
        let sans = uris
            .iter()
            .map(|u| Ok(SanType::URI((*u).try_into()?)))
            .collect::<Result<Vec<_>, TlsError>>()?;
        self.issue_sans(sans)
    }

    /// Issues a server certificate for the DNS name `dns` only (a control plane's serving
    /// certificate, such as istiod's `istiod.istio-system.svc`).
    pub fn issue_dns(&self, dns: &str) -> Result<IssuedCert, TlsError> {
        self.issue_sans(vec![SanType::DnsName(dns.try_into()?)])
    }

    /// Signs a PEM certificate signing request as a CA does: the subject's key and SANs
    /// from the request, valid from one second ago for `lifetime`. Returns the leaf (PEM)
    /// and the request's SANs, for the caller to check before handing the leaf out.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        lifetime: std::time::Duration,
    ) -> Result<SignedCsr, TlsError> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        let start = since_epoch.saturating_sub(std::time::Duration::from_secs(1));
        csr.params.not_before = epoch + start;
        csr.params.not_after = epoch + since_epoch + lifetime;
        csr.params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        csr.params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let uris = csr
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::URI(u) => u.as_str().to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        let cert = csr.signed_by(&self.cert, &self.key)?;
        Ok(SignedCsr {
            leaf_pem: cert.pem(),
            sans: uris,
        })
    }

    /// A certificate revocation list (PEM) signed by this CA listing the leaves of
    /// `revoked` (certificates it issued), valid until 2099.
    pub fn revocation_list(&self, revoked: &[&IssuedCert]) -> Result<String, TlsError> {
        self.crl(revoked, 2099)
    }

    /// Like [`DevCa::revocation_list`], but expired (its `nextUpdate` is in 2021).
    pub fn expired_revocation_list(&self, revoked: &[&IssuedCert]) -> Result<String, TlsError> {
        self.crl(revoked, 2021)
    }

    fn crl(&self, revoked: &[&IssuedCert], next_update_year: i32) -> Result<String, TlsError> {
        let mut revoked_certs = Vec::new();
        for issued in revoked {
            let der = rustls_pemfile::certs(&mut issued.chain_pem.as_bytes())
                .next()
                .ok_or_else(|| TlsError::BadCertificate("empty chain".into()))?
                .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
            let serial = super::parse(&der)?.raw_serial().to_vec();
            revoked_certs.push(rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(&serial),
                revocation_time: rcgen::date_time_ymd(2020, 6, 1),
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            });
        }
        let params = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(next_update_year, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.cert, &self.key)?.pem()?)
    }

    fn issue_sans(&self, sans: Vec<SanType>) -> Result<IssuedCert, TlsError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "waypoint dev");
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(IssuedCert {
            chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            root_pem: self.root_pem(),
        })
    }
}

/// A certificate signed from a request by [`DevCa::sign_csr`].
pub struct SignedCsr {
    /// The leaf, PEM.
    pub leaf_pem: String,
    /// The request's subject alternative names (URIs as text; others in debug form).
    pub sans: Vec<String>,
}

impl IssuedCert {
    /// Writes `cert-chain.pem`, `key.pem` and `root-cert.pem` into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("cert-chain.pem"), &self.chain_pem)?;
        std::fs::write(dir.join("key.pem"), &self.key_pem)?;
        std::fs::write(dir.join("root-cert.pem"), &self.root_pem)
    }
}
