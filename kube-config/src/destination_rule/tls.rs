//! DestinationRule `tls`: TLS originated to the Service's endpoints inside the tunnel.

use filters::model::{ClientCertificate, Crl, PrivateKeyPem, TlsRoots, UpstreamTls};
use serde::Deserialize;

use super::invalid;
use crate::secret::Secret;
use crate::LocalConfigError;

/// Where `credentialName` is looked up: the Secrets of the configuration, in the
/// DestinationRule's namespace.
#[derive(Clone, Copy)]
pub(crate) struct Credentials<'a> {
    /// The DestinationRule's namespace.
    pub(crate) namespace: &'a str,
    /// Every Secret of the configuration, with its label.
    pub(crate) secrets: &'a [(String, Secret)],
}

impl Credentials<'_> {
    fn get(&self, name: &str) -> Option<&(String, Secret)> {
        self.secrets.iter().find(|(_, s)| {
            s.metadata.name == name
                && s.metadata.namespace.as_deref().unwrap_or("default") == self.namespace
        })
    }
}

/// `tls` (ClientTLSSettings), as istiod applies it to a waypoint's cluster
/// (`buildWaypointTLSContext`): `SIMPLE` and `MUTUAL` originate TLS inside the tunnel;
/// `DISABLE` and `ISTIO_MUTUAL` (which istiod ignores for waypoints) originate none.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ClientTls {
    #[serde(default)]
    pub(super) mode: Option<String>,
    #[serde(default)]
    pub(super) client_certificate: Option<String>,
    #[serde(default)]
    pub(super) private_key: Option<String>,
    #[serde(default)]
    pub(super) ca_certificates: Option<String>,
    #[serde(default)]
    pub(super) credential_name: Option<String>,
    #[serde(default)]
    pub(super) subject_alt_names: Vec<String>,
    #[serde(default)]
    pub(super) sni: Option<String>,
    #[serde(default)]
    pub(super) insecure_skip_verify: Option<bool>,
    #[serde(default)]
    pub(super) ca_crl: Option<String>,
}

impl ClientTls {
    pub(super) fn settings(
        &self,
        h2: bool,
        label: &str,
        at: &str,
        credentials: Credentials<'_>,
    ) -> Result<Option<UpstreamTls>, LocalConfigError> {
        let mutual = match self.mode.as_deref().unwrap_or("DISABLE") {
            "DISABLE" | "ISTIO_MUTUAL" => return Ok(None),
            "SIMPLE" => false,
            "MUTUAL" => true,
            other => {
                return Err(invalid(
                    label,
                    format!("{at}.mode"),
                    format!("{other:?} is not DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL"),
                ))
            }
        };
        let insecure = self.insecure_skip_verify == Some(true);
        if let Some(name) = self.credential_name.as_deref().filter(|n| !n.is_empty()) {
            return self
                .credential_tls(name, mutual, insecure, label, at, credentials)
                .map(|(roots, crl, client_certificate)| {
                    Some(self.build(h2, roots, crl, client_certificate))
                });
        }
        let client_certificate = match (mutual, &self.client_certificate, &self.private_key) {
            (false, _, _) => None,
            (true, Some(c), Some(k)) if !c.is_empty() && !k.is_empty() => {
                Some(ClientCertificate::Files {
                    certificate: c.into(),
                    private_key: k.into(),
                })
            }
            (true, _, _) => {
                return Err(invalid(
                    label,
                    format!("{at}.clientCertificate"),
                    "MUTUAL needs clientCertificate and privateKey",
                ))
            }
        };
        let roots = match (&self.ca_certificates, insecure) {
            (_, true) => TlsRoots::Insecure,
            (Some(ca), false) if !ca.is_empty() => TlsRoots::File(ca.into()),
            _ => TlsRoots::System,
        };
        // istiod puts `caCrl` (a file in the pod) in the validation context next to the
        // roots (`constructUpstreamTLS`, cluster_tls.go), the system roots too; with
        // `insecureSkipVerify` nothing is verified and the CRL is dropped, as there.
        let crl = match (&self.ca_crl, &roots) {
            (_, TlsRoots::Insecure) => None,
            (Some(path), _) if !path.is_empty() => Some(Crl::File(path.into())),
            _ => None,
        };
        Ok(Some(self.build(h2, roots, crl, client_certificate)))
    }

    fn build(
        &self,
        h2: bool,
        roots: TlsRoots,
        crl: Option<Crl>,
        client_certificate: Option<ClientCertificate>,
    ) -> UpstreamTls {
        let sni = self.sni.clone().filter(|s| !s.is_empty());
        UpstreamTls {
            auto_sni: sni.is_none(),
            auto_san_validation: sni.is_none()
                && self.subject_alt_names.is_empty()
                && roots != TlsRoots::Insecure,
            sni,
            subject_alt_names: self.subject_alt_names.clone(),
            roots,
            crl,
            crl_leaf_only: false,
            client_certificate,
            alpn: if h2 { vec!["h2".into()] } else { Vec::new() },
        }
    }

    /// The roots and client certificate from the Secret `credentialName` names, as istiod
    /// serves them to the proxy: `<name>` for the certificate (MUTUAL), `<name>-cacert`
    /// or else `<name>` for the CA bundle (`GetCaCert`, pilot/pkg/credentials/kube/
    /// secrets.go), none with `insecureSkipVerify`. Istio's validation refuses the file
    /// fields and (SIMPLE) `insecureSkipVerify` next to it (`ValidateTLS`,
    /// pkg/config/validation/agent/validation.go).
    fn credential_tls(
        &self,
        credential: &str,
        mutual: bool,
        insecure: bool,
        label: &str,
        at: &str,
        credentials: Credentials<'_>,
    ) -> Result<(TlsRoots, Option<Crl>, Option<ClientCertificate>), LocalConfigError> {
        let field = format!("{at}.credentialName");
        let beside = [
            ("clientCertificate", self.client_certificate.is_some()),
            ("privateKey", self.private_key.is_some()),
            ("caCertificates", self.ca_certificates.is_some()),
            ("caCrl", self.ca_crl.is_some()),
            ("insecureSkipVerify", insecure && !mutual),
        ];
        if let Some((other, _)) = beside.iter().find(|(_, set)| *set) {
            return Err(invalid(
                label,
                format!("{at}.{other}"),
                "cannot be set together with credentialName",
            ));
        }
        let name = match credential.strip_prefix("kubernetes://") {
            Some(rest) => match rest.split_once('/') {
                None => rest,
                Some((ns, name)) if ns == credentials.namespace && !name.is_empty() => name,
                Some((ns, _)) => {
                    return Err(invalid(
                        label,
                        field,
                        format!(
                            "{credential:?}: the Secret must be in the rule's namespace {:?}, not {ns:?}",
                            credentials.namespace
                        ),
                    ))
                }
            },
            None if credential.contains("://") => {
                return Err(invalid(
                    label,
                    field,
                    format!(
                        "{credential:?}: only a Secret name or kubernetes://[<namespace>/]<name> is supported locally (a ConfigMap CA bundle comes from a BackendTLSPolicy)"
                    ),
                ))
            }
            None => credential,
        };
        if name.is_empty() || name.contains('/') {
            return Err(invalid(
                label,
                field,
                format!("{credential:?} is not a Secret name"),
            ));
        }
        let ns = credentials.namespace;
        let Some((secret_label, secret)) = credentials.get(name) else {
            return Err(invalid(
                label,
                field,
                format!("no Secret {ns}/{name} in the configuration"),
            ));
        };
        let from_secret = |(key, reason): (String, String), which: &str| {
            invalid(
                secret_label,
                key,
                format!("{reason} (credentialName of {label}, {which})"),
            )
        };
        let client_certificate = match mutual {
            false => None,
            true => {
                let pair = secret
                    .certificate()
                    .map_err(|e| from_secret(e, "client certificate"))?;
                Some(ClientCertificate::Pem {
                    chain: pair.chain,
                    key: PrivateKeyPem::new(pair.key),
                })
            }
        };
        if insecure {
            return Ok((TlsRoots::Insecure, None, client_certificate));
        }
        let ca_name = format!("{name}-cacert");
        let (ca_label, ca_secret) = credentials
            .get(&ca_name)
            .map(|(l, s)| (l, s))
            .unwrap_or((secret_label, secret));
        let roots = ca_secret
            .ca_bundle()
            .map_err(|(key, reason)| invalid(ca_label, key, format!("{reason} (credentialName of {label}, CA bundle)")))?
            .ok_or_else(|| {
                invalid(
                    label,
                    format!("{at}.credentialName"),
                    format!(
                        "{}: no CA bundle (ca.crt or cacert); put it there or in Secret {ns}/{ca_name}, or set insecureSkipVerify (MUTUAL) to skip verifying the server",
                        if ca_secret.metadata.name == ca_name { format!("Secret {ns}/{ca_name}") } else { format!("Secret {ns}/{name} (and no Secret {ns}/{ca_name})") }
                    ),
                )
            })?;
        Ok((
            TlsRoots::Pem(roots.roots),
            roots.crl.map(Crl::Pem),
            client_certificate,
        ))
    }
}
