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

impl IssuedCert {
    /// Writes `cert-chain.pem`, `key.pem` and `root-cert.pem` into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("cert-chain.pem"), &self.chain_pem)?;
        std::fs::write(dir.join("key.pem"), &self.key_pem)?;
        std::fs::write(dir.join("root-cert.pem"), &self.root_pem)
    }
}
