//! BackendTLSPolicy (`gateway.networking.k8s.io/v1`, also `v1alpha3`): TLS the waypoint
//! originates to a Service or ServiceEntry, verified against a CA bundle from a ConfigMap
//! (`ca.crt`) or the system roots.
//!
//! istiod turns each policy into a DestinationRule `tls` of mode SIMPLE
//! (`BackendTLSPolicyCollection`, pilot/pkg/config/kube/gateway/backend_policies.go): the
//! `hostname` is the SNI, `subjectAltNames` (Hostname and URI) the SANs, a target with a
//! `sectionName` a port-level setting of the port of that name. It merges that rule into a
//! user's DestinationRule for the same host (`mergeBackendPolicyTrafficPolicy`,
//! pilot/pkg/model/destination_rule.go): the user's fields win and the policy fills the
//! gaps, at the rule level and per port separately. [`HostTls::choose`] applies the same
//! order. Of two policies for the same target and section, istiod keeps the older one
//! (then the lower name); without creation times here, the lower `namespace/name` wins.
//!
//! Where the Gateway API asks more than istiod does, the Gateway API is followed: without
//! `subjectAltNames` the server certificate must carry the `hostname` as a DNS SAN (istiod
//! sends the SNI but checks no SAN), and every `caCertificateRefs` entry is trusted (istiod
//! uses the first). A reference the waypoint cannot resolve (a missing ConfigMap or
//! `ca.crt`, a bad certificate) refuses the configuration, where istiod blocks the
//! traffic. A target that does not exist, or a `sectionName` naming no port, leaves the
//! policy without effect for it, with a log line (istiod's `TargetNotFound`). `options`
//! (no TLS option is implemented) and other `wellKnownCACertificates` than `System` are
//! refused by field.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use filters::model::{TlsRoots, UpstreamTls};
use serde::Deserialize;

use super::destination_rule::TlsLevel;
use super::mesh::ConfigMap;
use super::objects::{ObjectMeta, Service};
use super::service_entry::ServiceEntry;
use super::LocalConfigError;

/// The annotation with which istiod leaves a policy unapplied.
const IGNORE: &str = "istio.io/ignore-policy-attachment";

/// A BackendTLSPolicy object.
#[derive(Debug, Deserialize)]
pub struct BackendTlsPolicy {
    pub(crate) metadata: ObjectMeta,
    pub(crate) spec: Spec,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Spec {
    target_refs: Vec<TargetRef>,
    validation: Validation,
    #[serde(default)]
    options: BTreeMap<String, String>,
}

/// `LocalPolicyTargetReferenceWithSectionName`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TargetRef {
    #[serde(default)]
    group: String,
    kind: String,
    name: String,
    #[serde(default)]
    section_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Validation {
    #[serde(default)]
    ca_certificate_refs: Vec<LocalRef>,
    #[serde(default, rename = "wellKnownCACertificates")]
    well_known_ca_certificates: Option<String>,
    #[serde(default)]
    hostname: String,
    #[serde(default)]
    subject_alt_names: Vec<SubjectAltName>,
}

/// `LocalObjectReference`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocalRef {
    #[serde(default)]
    group: String,
    kind: String,
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubjectAltName {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    uri: Option<String>,
}

/// The TLS one policy asks for (without ALPN, which depends on the port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PolicyTls {
    sni: String,
    subject_alt_names: Vec<String>,
    roots: TlsRoots,
}

impl PolicyTls {
    /// The origination settings for a port (`h2`: HTTP/2, offered by ALPN as istiod does).
    fn settings(&self, h2: bool) -> UpstreamTls {
        UpstreamTls {
            sni: Some(self.sni.clone()),
            auto_sni: false,
            subject_alt_names: self.subject_alt_names.clone(),
            auto_san_validation: self.subject_alt_names.is_empty(),
            roots: self.roots.clone(),
            // A ConfigMap CA bundle carries no revocation list.
            crl: None,
            crl_leaf_only: false,
            client_certificate: None,
            alpn: if h2 { vec!["h2".into()] } else { Vec::new() },
        }
    }
}

/// The policies' TLS for one host: for all its ports, and per port (`sectionName`).
#[derive(Debug, Default, Clone)]
pub(crate) struct HostTls {
    all_ports: Option<PolicyTls>,
    ports: BTreeMap<u16, PolicyTls>,
}

impl HostTls {
    /// The TLS for `port`, given where a DestinationRule sets `tls` for it (`rule`, the
    /// rule's settings, `None` for DISABLE) as istiod's merge orders them: the rule's
    /// port-level `tls`, the policy's port-level one, the rule's top-level one, the
    /// policy's.
    pub(crate) fn choose(
        &self,
        port: u16,
        h2: bool,
        rule: TlsLevel,
        rule_tls: Option<UpstreamTls>,
    ) -> Option<UpstreamTls> {
        let policy_port = self.ports.get(&port).map(|p| p.settings(h2));
        match rule {
            TlsLevel::Port => rule_tls,
            TlsLevel::Rule => policy_port.or(rule_tls),
            TlsLevel::Unset => {
                policy_port.or_else(|| self.all_ports.as_ref().map(|p| p.settings(h2)))
            }
        }
    }
}

/// The TLS the BackendTLSPolicies ask for, by host (a Service's FQDN, a ServiceEntry's
/// host).
pub(crate) type BackendTls = HashMap<String, HostTls>;

/// What the policies may target and read, in their own namespaces.
pub(crate) struct Targets<'a> {
    pub(crate) services: &'a [(String, Service)],
    pub(crate) entries: &'a [(String, ServiceEntry)],
    pub(crate) config_maps: &'a [(String, ConfigMap)],
    pub(crate) domain_suffix: &'a str,
}

/// Validates every policy and collects their TLS by host.
pub(crate) fn bind(
    policies: &[(String, BackendTlsPolicy)],
    targets: &Targets<'_>,
) -> Result<BackendTls, LocalConfigError> {
    let mut ordered: Vec<&(String, BackendTlsPolicy)> = policies.iter().collect();
    ordered.sort_by(|(_, a), (_, b)| {
        (namespace_of(&a.metadata), &a.metadata.name)
            .cmp(&(namespace_of(&b.metadata), &b.metadata.name))
    });
    let mut by_host = BackendTls::new();
    for (label, policy) in ordered {
        if policy
            .metadata
            .annotations
            .get(IGNORE)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            tracing::info!(policy = %label, "ignored: {IGNORE} is true");
            continue;
        }
        let tls = policy.tls(label, targets)?;
        let ns = namespace_of(&policy.metadata);
        for (i, target) in policy.spec.target_refs.iter().enumerate() {
            let at = format!("spec.targetRefs[{i}]");
            let Some((hosts, port)) = target.resolve(label, &at, ns, targets)? else {
                continue;
            };
            for host in hosts {
                let entry = by_host.entry(host.clone()).or_default();
                let slot = match port {
                    Some(p) => entry.ports.entry(p),
                    None => {
                        if entry.all_ports.is_none() {
                            entry.all_ports = Some(tls.clone());
                        } else {
                            conflicted(label, &host, None);
                        }
                        continue;
                    }
                };
                match slot {
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert(tls.clone());
                    }
                    std::collections::btree_map::Entry::Occupied(_) => {
                        conflicted(label, &host, port)
                    }
                }
            }
        }
    }
    Ok(by_host)
}

fn conflicted(label: &str, host: &str, port: Option<u16>) {
    tracing::warn!(policy = %label, host, port, "not applied: another BackendTLSPolicy (earlier by namespace/name) targets the same backend");
}

impl BackendTlsPolicy {
    /// The policy's TLS, its references resolved.
    fn tls(&self, label: &str, targets: &Targets<'_>) -> Result<PolicyTls, LocalConfigError> {
        if self.spec.target_refs.is_empty() {
            return Err(invalid(
                label,
                "spec.targetRefs",
                "must name at least one target",
            ));
        }
        if let Some(key) = self.spec.options.keys().next() {
            return Err(invalid(
                label,
                format!("spec.options[{key}]"),
                "not supported: the waypoint implements no TLS options",
            ));
        }
        let v = &self.spec.validation;
        let hostname = v.hostname.as_str();
        if hostname.is_empty() {
            return Err(invalid(label, "spec.validation.hostname", "required"));
        }
        if hostname.parse::<IpAddr>().is_ok() || hostname.contains('*') || hostname.contains(':') {
            return Err(invalid(
                label,
                "spec.validation.hostname",
                format!("{hostname:?} is not a DNS name (no IP address, no wildcard)"),
            ));
        }
        let subject_alt_names = v
            .subject_alt_names
            .iter()
            .enumerate()
            .map(|(i, san)| san.value(label, &format!("spec.validation.subjectAltNames[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let roots = match (
            &v.well_known_ca_certificates,
            v.ca_certificate_refs.is_empty(),
        ) {
            (Some(_), false) => {
                return Err(invalid(
                    label,
                    "spec.validation",
                    "set caCertificateRefs or wellKnownCACertificates, not both",
                ))
            }
            (None, true) => {
                return Err(invalid(
                    label,
                    "spec.validation",
                    "one of caCertificateRefs and wellKnownCACertificates is required",
                ))
            }
            (Some(w), true) if w == "System" => TlsRoots::System,
            (Some(w), true) => {
                return Err(invalid(
                    label,
                    "spec.validation.wellKnownCACertificates",
                    format!("{w:?} is not supported (System)"),
                ))
            }
            (None, false) => {
                let ns = namespace_of(&self.metadata);
                let mut bundle = String::new();
                for (i, r) in v.ca_certificate_refs.iter().enumerate() {
                    bundle.push_str(&r.ca_bundle(
                        label,
                        &format!("spec.validation.caCertificateRefs[{i}]"),
                        ns,
                        targets.config_maps,
                    )?);
                    bundle.push('\n');
                }
                TlsRoots::Pem(bundle)
            }
        };
        Ok(PolicyTls {
            sni: hostname.to_string(),
            subject_alt_names,
            roots,
        })
    }
}

impl SubjectAltName {
    fn value(&self, label: &str, at: &str) -> Result<String, LocalConfigError> {
        match (self.kind.as_str(), &self.hostname, &self.uri) {
            ("Hostname", Some(h), None) if !h.is_empty() => Ok(h.clone()),
            ("URI", None, Some(u)) if !u.is_empty() => Ok(u.clone()),
            ("Hostname", _, _) => Err(invalid(
                label,
                format!("{at}.hostname"),
                "type Hostname needs hostname (and no uri)",
            )),
            ("URI", _, _) => Err(invalid(
                label,
                format!("{at}.uri"),
                "type URI needs uri (and no hostname)",
            )),
            (other, _, _) => Err(invalid(
                label,
                format!("{at}.type"),
                format!("{other:?} is not Hostname or URI"),
            )),
        }
    }
}

impl LocalRef {
    /// The PEM bundle under `ca.crt` of the ConfigMap this names, in namespace `ns`.
    fn ca_bundle(
        &self,
        label: &str,
        at: &str,
        ns: &str,
        config_maps: &[(String, ConfigMap)],
    ) -> Result<String, LocalConfigError> {
        if !self.group.is_empty() || self.kind != "ConfigMap" {
            return Err(invalid(
                label,
                format!("{at}.kind"),
                format!(
                    "{:?} in group {:?} is not supported (ConfigMap in the core group)",
                    self.kind, self.group
                ),
            ));
        }
        let Some((_, cm)) = config_maps
            .iter()
            .find(|(_, c)| c.metadata.name == self.name && namespace_of(&c.metadata) == ns)
        else {
            return Err(invalid(
                label,
                format!("{at}.name"),
                format!("no ConfigMap {ns}/{}", self.name),
            ));
        };
        let Some(pem) = cm.data.get("ca.crt") else {
            return Err(invalid(
                label,
                format!("{at}.name"),
                format!("ConfigMap {ns}/{} has no ca.crt", self.name),
            ));
        };
        check_certificates(pem).map_err(|reason| {
            invalid(
                label,
                format!("{at}.name"),
                format!("ConfigMap {ns}/{} ca.crt: {reason}", self.name),
            )
        })?;
        Ok(pem.clone())
    }
}

/// Whether `pem` holds at least one certificate, and only parsable ones.
fn check_certificates(pem: &str) -> Result<(), String> {
    let mut found = 0;
    for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
        let der = cert.map_err(|e| format!("not PEM: {e}"))?;
        x509_parser::parse_x509_certificate(&der)
            .map_err(|e| format!("certificate {}: {e}", found + 1))?;
        found += 1;
    }
    if found == 0 {
        return Err("no CERTIFICATE block".into());
    }
    Ok(())
}

/// The hosts a target stands for, and the port its `sectionName` names.
type Target = (Vec<String>, Option<u16>);

impl TargetRef {
    /// The hosts and (with `sectionName`) the port number this target stands for; `None`
    /// when the target or its section does not exist (logged; the policy has no effect).
    fn resolve(
        &self,
        label: &str,
        at: &str,
        ns: &str,
        targets: &Targets<'_>,
    ) -> Result<Option<Target>, LocalConfigError> {
        let section = self.section_name.as_deref().filter(|s| !s.is_empty());
        let missing = |what: String| {
            tracing::warn!(policy = %label, target = %at, "not applied: {what}");
            Ok(None)
        };
        match (self.group.as_str(), self.kind.as_str()) {
            ("", "Service") => {
                let Some((_, svc)) = targets
                    .services
                    .iter()
                    .find(|(_, s)| s.metadata.name == self.name && namespace_of(&s.metadata) == ns)
                else {
                    return missing(format!("no Service {ns}/{}", self.name));
                };
                let port = match section {
                    None => None,
                    Some(s) => match svc.spec.ports.iter().find(|p| p.name.as_deref() == Some(s)) {
                        Some(p) => Some(p.port),
                        None => {
                            return missing(format!(
                                "sectionName {s:?} is no port of Service {ns}/{}",
                                self.name
                            ))
                        }
                    },
                };
                let host = format!("{}.{ns}.svc.{}", self.name, targets.domain_suffix);
                Ok(Some((vec![host], port)))
            }
            ("networking.istio.io", "ServiceEntry") => {
                let Some((_, entry)) = targets
                    .entries
                    .iter()
                    .find(|(_, e)| e.metadata.name == self.name && e.namespace() == ns)
                else {
                    return missing(format!("no ServiceEntry {ns}/{}", self.name));
                };
                let port = match section {
                    None => None,
                    Some(s) => match entry.port_named(s) {
                        Some(p) => Some(p),
                        None => {
                            return missing(format!(
                                "sectionName {s:?} is no port of ServiceEntry {ns}/{}",
                                self.name
                            ))
                        }
                    },
                };
                Ok(Some((entry.hosts().to_vec(), port)))
            }
            (group, kind) => Err(invalid(
                label,
                format!("{at}.kind"),
                format!(
                    "{kind:?} in group {group:?} is not supported (Service in the core group, ServiceEntry in networking.istio.io)"
                ),
            )),
        }
    }
}

fn namespace_of(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

fn invalid(label: &str, field: impl Into<String>, message: impl Into<String>) -> LocalConfigError {
    LocalConfigError::Invalid {
        object: label.to_string(),
        field: field.into(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests;
