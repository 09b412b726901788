//! Secret (`v1`), for DestinationRule `tls.credentialName`: the client certificate and the
//! CA bundle the waypoint originates TLS with, read from the keys istiod reads
//! (`ExtractCertInfo`, `ExtractRoot`, pilot/pkg/credentials/kube/secrets.go): `cert` and
//! `key`, else `tls.crt` and `tls.key`; `cacert` with its CRL `crl`, else `ca.crt` with
//! `ca.crl`. `data` is base64; `stringData` (plain text) wins over it, as the API server
//! merges them. An OCSP staple (with `tls.crt`), which istiod would pass on, is refused by
//! key, and so is a CRL under the other bundle's key (istiod would ignore it).

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;

use super::objects::ObjectMeta;

/// A core/v1 Secret. Its values never appear in `Debug` output.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Secret {
    #[serde(default)]
    #[allow(dead_code)]
    api_version: String,
    #[serde(default)]
    #[allow(dead_code)]
    kind: String,
    /// Name and namespace.
    pub metadata: ObjectMeta,
    /// `kubernetes.io/tls`, `Opaque` (the default), or another type.
    #[serde(default, rename = "type")]
    pub secret_type: Option<String>,
    /// Values, base64.
    #[serde(default)]
    data: BTreeMap<String, String>,
    /// Values, plain text.
    #[serde(default)]
    string_data: BTreeMap<String, String>,
    /// Accepted; a local file has no API server to enforce it.
    #[serde(default)]
    #[allow(dead_code)]
    immutable: Option<bool>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("metadata", &self.metadata)
            .field("type", &self.secret_type)
            .field("keys", &self.values_keys())
            .finish()
    }
}

/// A client certificate and key, PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct CertPair {
    /// The chain, leaf first.
    pub chain: String,
    /// The private key.
    pub key: String,
}

/// A CA bundle and its revocation lists, PEM.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CaBundle {
    /// The CA certificates.
    pub roots: String,
    /// The CRLs, if the Secret has any (empty text is none).
    pub crl: Option<String>,
}

/// Why a Secret cannot be used: the key (field path) and the reason.
pub type SecretError = (String, String);

impl Secret {
    fn values_keys(&self) -> Vec<&String> {
        let mut keys: Vec<&String> = self.data.keys().chain(self.string_data.keys()).collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// The value under `key` (`stringData` over `data`), UTF-8.
    fn value(&self, key: &str) -> Result<Option<String>, SecretError> {
        if let Some(v) = self.string_data.get(key) {
            return Ok(Some(v.clone()));
        }
        let Some(b64) = self.data.get(key) else {
            return Ok(None);
        };
        let field = format!("data.{key}");
        let compact: String = b64.split_whitespace().collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|e| (field.clone(), format!("not base64: {e}")))?;
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| (field, "not UTF-8 PEM".to_string()))
    }

    fn non_empty(&self, key: &str) -> Result<Option<String>, SecretError> {
        Ok(self.value(key)?.filter(|v| !v.is_empty()))
    }

    fn check_type(&self) -> Result<(), SecretError> {
        match self.secret_type.as_deref() {
            None | Some("Opaque") | Some("kubernetes.io/tls") => Ok(()),
            Some(other) => Err((
                "type".into(),
                format!("{other:?} holds no TLS credential (kubernetes.io/tls or Opaque)"),
            )),
        }
    }

    fn refuse(&self, keys: &[&str]) -> Result<(), SecretError> {
        for key in keys {
            if self.value(key)?.is_some() {
                return Err((
                    format!("data.{key}"),
                    "not supported by the waypoint (no OCSP stapling for TLS origination)".into(),
                ));
            }
        }
        Ok(())
    }

    /// The client certificate and key: `cert`/`key`, else `tls.crt`/`tls.key`.
    pub fn certificate(&self) -> Result<CertPair, SecretError> {
        self.check_type()?;
        let pair = |c: &str, k: &str| -> Result<Option<(String, String, String)>, SecretError> {
            Ok(match (self.non_empty(c)?, self.non_empty(k)?) {
                (Some(chain), Some(key)) => Some((chain, key, k.to_string())),
                _ => None,
            })
        };
        let generic = pair("cert", "key")?;
        let found = match generic {
            Some(p) => Some(p),
            None => pair("tls.crt", "tls.key")?,
        };
        let Some((chain, key, key_name)) = found else {
            return Err((
                "data".into(),
                format!(
                    "no client certificate: expected keys tls.crt and tls.key (or cert and key); found {:?}",
                    self.values_keys()
                ),
            ));
        };
        // istiod passes an OCSP staple on with `tls.crt` (`toEnvoyTLSSecret`); a CRL only
        // with the CA bundle.
        let chain_key = if key_name == "key" { "cert" } else { "tls.crt" };
        if chain_key == "tls.crt" {
            self.refuse(&["tls.ocsp-staple"])?;
        }
        check_certs(&chain, chain_key)?;
        match rustls_pemfile::private_key(&mut key.as_bytes()) {
            Ok(Some(_)) => {}
            Ok(None) => return Err((format!("data.{key_name}"), "no PRIVATE KEY block".into())),
            Err(e) => return Err((format!("data.{key_name}"), format!("not PEM: {e}"))),
        }
        Ok(CertPair { chain, key })
    }

    /// The CA bundle, if the Secret has one: `cacert` with the CRLs of `crl`, else `ca.crt`
    /// with those of `ca.crl` (`ExtractRoot`).
    pub fn ca_bundle(&self) -> Result<Option<CaBundle>, SecretError> {
        self.check_type()?;
        let (pem, key, crl_key, other_crl) =
            match (self.non_empty("cacert")?, self.non_empty("ca.crt")?) {
                (Some(p), _) => (p, "cacert", "crl", "ca.crl"),
                (None, Some(p)) => (p, "ca.crt", "ca.crl", "crl"),
                (None, None) => return Ok(None),
            };
        if self.non_empty(other_crl)?.is_some() {
            return Err((
                format!("data.{other_crl}"),
                format!("istiod reads the CRL of {key} from {crl_key}, and would ignore this one"),
            ));
        }
        check_certs(&pem, key)?;
        let crl = match self.value(crl_key)? {
            None => None,
            Some(text) => check_crls(&text)
                .map_err(|reason| (format!("data.{crl_key}"), reason))?
                .then_some(text),
        };
        Ok(Some(CaBundle { roots: pem, crl }))
    }
}

/// Whether PEM text holds revocation lists (false: empty text), each an `X509 CRL` block
/// the waypoint can check with (v2, not a delta CRL).
pub(crate) fn check_crls(pem: &str) -> Result<bool, String> {
    if pem.trim().is_empty() {
        return Ok(false);
    }
    let mut found = 0;
    for der in rustls_pemfile::crls(&mut pem.as_bytes()) {
        let der = der.map_err(|e| format!("not PEM: {e}"))?;
        webpki::OwnedCertRevocationList::from_der(der.as_ref())
            .map_err(|e| format!("unusable CRL: {e}"))?;
        found += 1;
    }
    if found == 0 {
        return Err("no X509 CRL block".into());
    }
    Ok(true)
}

fn check_certs(pem: &str, key: &str) -> Result<(), SecretError> {
    let mut found = 0;
    for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
        cert.map_err(|e| (format!("data.{key}"), format!("not PEM: {e}")))?;
        found += 1;
    }
    if found == 0 {
        return Err((format!("data.{key}"), "no CERTIFICATE block".into()));
    }
    Ok(())
}
