//! DestinationRule `tls`: TLS originated to the Service's endpoints inside the tunnel.

use filters::model::{ClientCertificate, TlsRoots, UpstreamTls};
use serde::Deserialize;

use super::{invalid, unsupported};
use crate::LocalConfigError;

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
        unsupported(
            label,
            at,
            &[
                ("credentialName", self.credential_name.is_some()),
                ("caCrl", self.ca_crl.is_some()),
            ],
        )?;
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
        let insecure = self.insecure_skip_verify == Some(true);
        let sni = self.sni.clone().filter(|s| !s.is_empty());
        Ok(Some(UpstreamTls {
            auto_sni: sni.is_none(),
            auto_san_validation: sni.is_none() && self.subject_alt_names.is_empty() && !insecure,
            sni,
            subject_alt_names: self.subject_alt_names.clone(),
            roots: match (&self.ca_certificates, insecure) {
                (_, true) => TlsRoots::Insecure,
                (Some(ca), false) if !ca.is_empty() => TlsRoots::File(ca.into()),
                _ => TlsRoots::System,
            },
            client_certificate,
            alpn: if h2 { vec!["h2".into()] } else { Vec::new() },
        }))
    }
}
