//! DestinationRule `trafficPolicy.tunnel`: a Service's TCP traffic carried through an HTTP
//! proxy at the endpoint, as istiod writes it on the waypoint's TCP chain
//! (`tunnelingconfig.Apply`: `targetHost:targetPort` as the tunnel's hostname, `POST`
//! instead of `CONNECT` for `protocol: POST`), validated as istiod's
//! `validateTunnelSettings` does.

use filters::model::{TcpTunnel, TunnelMethod};
use serde::Deserialize;

use super::invalid;
use crate::LocalConfigError;

/// `tunnel`.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct Tunnel {
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    target_host: String,
    #[serde(default)]
    target_port: u32,
}

impl Tunnel {
    /// The tunnel of the rule's TCP ports; `label` names the object in errors.
    pub(super) fn settings(&self, label: &str) -> Result<TcpTunnel, LocalConfigError> {
        let at = "spec.trafficPolicy.tunnel";
        let method = match self.protocol.as_deref() {
            None | Some("") | Some("CONNECT") => TunnelMethod::Connect,
            Some("POST") => TunnelMethod::Post { path: "/".into() },
            Some(other) => {
                return Err(invalid(
                    label,
                    format!("{at}.protocol"),
                    format!("{other:?} is not a tunnel protocol (CONNECT, POST)"),
                ))
            }
        };
        let host = self.target_host.as_str();
        if host.parse::<std::net::IpAddr>().is_err() && !is_fqdn(host) {
            return Err(invalid(
                label,
                format!("{at}.targetHost"),
                format!("{host:?} is neither a valid FQDN nor an IP address"),
            ));
        }
        let port = u16::try_from(self.target_port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| {
                invalid(
                    label,
                    format!("{at}.targetPort"),
                    format!("{} is not a port (1-65535)", self.target_port),
                )
            })?;
        Ok(TcpTunnel::to(host, port, method))
    }
}

/// A DNS name of labels of letters, digits and inner hyphens, each at most 63 bytes, at
/// most 255 in all (an optional trailing dot aside).
fn is_fqdn(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= 255
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tunnel(yaml: &str) -> Result<TcpTunnel, String> {
        let t: Tunnel = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
        t.settings("DestinationRule default/db")
            .map_err(|e| e.to_string())
    }

    #[test]
    fn connect_is_the_default_and_post_is_read() {
        assert_eq!(
            tunnel("{targetHost: db.example.com, targetPort: 5432}").unwrap(),
            TcpTunnel {
                hostname: "db.example.com:5432".into(),
                method: TunnelMethod::Connect,
                http2: false,
            }
        );
        assert_eq!(
            tunnel("{protocol: POST, targetHost: 'fd00::1', targetPort: 443}").unwrap(),
            TcpTunnel {
                hostname: "[fd00::1]:443".into(),
                method: TunnelMethod::Post { path: "/".into() },
                http2: false,
            }
        );
    }

    #[test]
    fn invalid_settings_are_refused_by_field() {
        for (yaml, field) in [
            ("{protocol: GET, targetHost: a, targetPort: 1}", "protocol"),
            ("{targetHost: 'a b', targetPort: 1}", "targetHost"),
            ("{targetPort: 1}", "targetHost"),
            ("{targetHost: a, targetPort: 0}", "targetPort"),
            ("{targetHost: a, targetPort: 70000}", "targetPort"),
        ] {
            let e = tunnel(yaml).unwrap_err();
            assert!(
                e.contains(&format!("spec.trafficPolicy.tunnel.{field}")),
                "{yaml}: {e}"
            );
        }
        assert!(tunnel("{targetHost: a, targetPort: 1, path: /}")
            .unwrap_err()
            .contains("path"));
    }
}
