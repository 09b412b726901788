//! TLS the waypoint originates towards a Service's endpoints, inside the HBONE tunnel
//! (DestinationRule `trafficPolicy.tls` with mode `SIMPLE` or `MUTUAL`; istiod puts it in
//! the `internal_upstream` transport socket of the waypoint's `inbound-vip` cluster).

use std::path::PathBuf;

use serde::Serialize;

/// The certificate authorities a server's chain is verified against.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum TlsRoots {
    /// No verification (`insecureSkipVerify`, or Envoy's empty validation context).
    Insecure,
    /// The operating system's roots (istiod's `file-root:system`, a rule without
    /// `caCertificates`).
    System,
    /// A PEM bundle on disk (`caCertificates`), read when a connection needs it.
    File(PathBuf),
    /// A PEM bundle given inline.
    Pem(String),
}

/// Certificate revocation lists (PEM, one or more CRLs) the server's chain is checked
/// against (Envoy's `CertificateValidationContext.crl`: a DestinationRule's `caCrl` file,
/// or a Secret's `ca.crl` served inline).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum Crl {
    /// A PEM file on disk, read when a connection needs it.
    File(PathBuf),
    /// PEM given inline.
    Pem(String),
}

/// A client certificate and its key (`MUTUAL`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum ClientCertificate {
    /// PEM files on disk (`clientCertificate`, `privateKey`), read when a connection
    /// needs them.
    Files {
        /// The certificate chain.
        certificate: PathBuf,
        /// The private key.
        private_key: PathBuf,
    },
    /// PEM given inline: a Secret named by `credentialName` (from istiod over ADS, or a
    /// local Secret object). Empty while the secret has not arrived, which no handshake
    /// can use.
    Pem {
        /// The certificate chain, leaf first.
        chain: String,
        /// The private key.
        key: PrivateKeyPem,
    },
}

/// A private key in PEM. `Debug` and serialization (`/config_dump`, the history) show
/// `[redacted]`, never the key; equality and hashing use it, so a rotated key is a new
/// setting.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct PrivateKeyPem(String);

impl PrivateKeyPem {
    /// Wraps a PEM private key.
    pub fn new(pem: impl Into<String>) -> Self {
        Self(pem.into())
    }

    /// The PEM text, for building a TLS configuration.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for PrivateKeyPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKeyPem([redacted])")
    }
}

impl Serialize for PrivateKeyPem {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

/// How the waypoint speaks TLS to a Service's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct UpstreamTls {
    /// The SNI to send; with `None` and `auto_sni`, the request's host.
    pub sni: Option<String>,
    /// Send the request's host (without port) as SNI when `sni` is unset.
    pub auto_sni: bool,
    /// The server certificate must carry one of these SANs (exact: DNS, URI or IP).
    pub subject_alt_names: Vec<String>,
    /// Without listed SANs: the server certificate must have a DNS SAN matching the SNI.
    pub auto_san_validation: bool,
    /// Who the server chain must be signed by.
    pub roots: TlsRoots,
    /// Revocation lists the chain is checked against: every certificate of the chain below
    /// the trust anchor must have a CRL from its issuer and not be listed in it, as Envoy
    /// checks a `crl` by default.
    pub crl: Option<Crl>,
    /// With a CRL, only the server's own certificate is checked (Envoy's
    /// `only_verify_leaf_cert_crl`).
    pub crl_leaf_only: bool,
    /// The certificate the waypoint presents (`MUTUAL`).
    pub client_certificate: Option<ClientCertificate>,
    /// ALPN protocols offered (`h2` for HTTP/2 ports, as istiod sets).
    pub alpn: Vec<String>,
}

impl UpstreamTls {
    /// The SNI for a request to `host` (its `Host`/`:authority`, port stripped).
    pub fn sni_for(&self, host: Option<&str>) -> Option<String> {
        if let Some(s) = &self.sni {
            return Some(s.clone());
        }
        if !self.auto_sni {
            return None;
        }
        let host = host?;
        // `name:port`; an IPv6 literal keeps its colons (and SNI never carries an IP).
        let name = match host.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        };
        (!name.is_empty()).then(|| name.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_is_explicit_or_the_host_without_port() {
        let mut t = UpstreamTls {
            sni: None,
            auto_sni: true,
            subject_alt_names: vec![],
            auto_san_validation: true,
            roots: TlsRoots::System,
            crl: None,
            crl_leaf_only: false,
            client_certificate: None,
            alpn: vec![],
        };
        assert_eq!(t.sni_for(Some("a.b:8080")).as_deref(), Some("a.b"));
        assert_eq!(t.sni_for(Some("a.b")).as_deref(), Some("a.b"));
        assert_eq!(t.sni_for(None), None);
        t.auto_sni = false;
        assert_eq!(t.sni_for(Some("a.b")), None);
        t.sni = Some("x.y".into());
        assert_eq!(t.sni_for(Some("a.b")).as_deref(), Some("x.y"));
    }

    #[test]
    fn an_inline_private_key_is_never_shown() {
        let c = ClientCertificate::Pem {
            chain: "CHAIN".into(),
            key: PrivateKeyPem::new("-----BEGIN PRIVATE KEY-----\nSECRET"),
        };
        let json = serde_json::to_string(&c).unwrap();
        assert!(
            json.contains("CHAIN") && json.contains("[redacted]"),
            "{json}"
        );
        assert!(!json.contains("SECRET"), "{json}");
        assert!(!format!("{c:?}").contains("SECRET"));
        // A rotated key is a different setting.
        let rotated = ClientCertificate::Pem {
            chain: "CHAIN".into(),
            key: PrivateKeyPem::new("OTHER"),
        };
        assert_ne!(c, rotated);
    }
}
