//! AuthorizationPolicy (`security.istio.io/v1`): compiled into the waypoint's policy
//! model and bound through `targetRefs`.
//!
//! A policy binds to this waypoint when a `targetRef` names the waypoint `Gateway`, a
//! Service in the policy's namespace, or the `istio-waypoint` GatewayClass (from the root
//! namespace). Selector-based and namespace-wide policies are ztunnel's; the waypoint skips
//! them with a log line. An invalid policy rejects the whole configuration: skipping it
//! could open access.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use filters::authz::matcher::{PathPattern, ValueMatch};
use filters::authz::model::{Action, Condition, Field, Key, Operation, Policy, Rule, Source};
use filters::authz::Policies;
use filters::model::NamespacedName;
use ipnet::IpNet;
use serde::Deserialize;

use super::objects::ObjectMeta;
use super::LocalConfigError;

#[derive(Debug, Deserialize)]
pub struct AuthorizationPolicy {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PolicySpec,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    #[serde(default)]
    pub selector: Option<serde_yaml::Value>,
    #[serde(default)]
    pub target_ref: Option<TargetRef>,
    #[serde(default)]
    pub target_refs: Vec<TargetRef>,
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub provider: Option<Provider>,
    #[serde(default)]
    pub rules: Option<Vec<RuleSpec>>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct TargetRef {
    #[serde(default)]
    pub group: Option<String>,
    pub kind: String,
    pub name: String,
    /// Istio's `PolicyTargetReference.namespace`: the policy's own namespace when set.
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    pub name: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    #[serde(default)]
    pub from: Vec<FromSpec>,
    #[serde(default)]
    pub to: Vec<ToSpec>,
    #[serde(default)]
    pub when: Vec<ConditionSpec>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FromSpec {
    #[serde(default)]
    pub source: SourceSpec,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ToSpec {
    #[serde(default)]
    pub operation: OperationSpec,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceSpec {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub request_principals: Vec<String>,
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    #[serde(default)]
    pub trust_domains: Vec<String>,
    #[serde(default)]
    pub not_trust_domains: Vec<String>,
    #[serde(default)]
    pub service_accounts: Vec<String>,
    #[serde(default)]
    pub not_service_accounts: Vec<String>,
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OperationSpec {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub not_ports: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConditionSpec {
    pub key: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub not_values: Vec<String>,
}

type Invalid = (String, String);

fn values(v: &[String]) -> Vec<ValueMatch> {
    v.iter().map(|s| ValueMatch::parse(s)).collect()
}

fn field(pos: &[String], neg: &[String]) -> Field<ValueMatch> {
    Field {
        values: values(pos),
        not_values: values(neg),
    }
}

fn ip(v: &str, what: &str) -> Result<IpNet, Invalid> {
    v.parse::<IpNet>()
        .or_else(|_| v.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| (what.to_string(), format!("not an IP or CIDR: {v:?}")))
}

fn ips(pos: &[String], neg: &[String], what: &str) -> Result<Field<IpNet>, Invalid> {
    Ok(Field {
        values: pos.iter().map(|v| ip(v, what)).collect::<Result<_, _>>()?,
        not_values: neg.iter().map(|v| ip(v, what)).collect::<Result<_, _>>()?,
    })
}

fn port(v: &str, what: &str) -> Result<u16, Invalid> {
    v.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| (what.to_string(), format!("not a port: {v:?}")))
}

fn service_account(v: &str, ns: &str, what: &str) -> Result<(String, String), Invalid> {
    match v.split_once('/') {
        Some((n, s)) if !n.is_empty() && !s.is_empty() && !s.contains('/') => {
            Ok((n.into(), s.into()))
        }
        None if !v.is_empty() => Ok((ns.into(), v.into())),
        _ => Err((what.to_string(), format!("not ns/sa or sa: {v:?}"))),
    }
}

fn key(k: &str, what: &str) -> Result<Key, Invalid> {
    let bracket = |prefix: &str| -> Option<Vec<String>> {
        let rest = k.strip_prefix(prefix)?;
        let parts: Vec<String> = rest
            .split(']')
            .filter(|p| !p.is_empty())
            .map(|p| p.strip_prefix('[').map(str::to_string))
            .collect::<Option<_>>()?;
        (!parts.is_empty()).then_some(parts)
    };
    Ok(match k {
        "source.ip" => Key::SourceIp,
        "remote.ip" => Key::RemoteIp,
        "source.namespace" => Key::SourceNamespace,
        "source.principal" => Key::SourcePrincipal,
        "source.serviceAccount" => Key::SourceServiceAccount,
        "request.auth.principal" => Key::AuthPrincipal,
        "request.auth.audiences" => Key::AuthAudiences,
        "request.auth.presenter" => Key::AuthPresenter,
        "destination.ip" => Key::DestinationIp,
        "destination.port" => Key::DestinationPort,
        "connection.sni" => Key::ConnectionSni,
        _ if k.starts_with("experimental.envoy.filters.") => Key::Unsupported(k.to_string()),
        _ => {
            if let Some(h) = bracket("request.headers").filter(|p| p.len() == 1) {
                Key::RequestHeader(h[0].to_ascii_lowercase())
            } else if let Some(path) = bracket("request.auth.claims") {
                Key::AuthClaims(path)
            } else {
                return Err((what.to_string(), format!("unknown key {k:?}")));
            }
        }
    })
}

fn rule(r: &RuleSpec, ns: &str, at: &str) -> Result<Rule, Invalid> {
    let from = r
        .from
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let s = &f.source;
            let w = |x: &str| format!("{at}.from[{i}].source.{x}");
            Ok(Source {
                principals: field(&s.principals, &s.not_principals),
                request_principals: field(&s.request_principals, &s.not_request_principals),
                namespaces: field(&s.namespaces, &s.not_namespaces),
                trust_domains: field(&s.trust_domains, &s.not_trust_domains),
                service_accounts: Field {
                    values: s
                        .service_accounts
                        .iter()
                        .map(|v| service_account(v, ns, &w("serviceAccounts")))
                        .collect::<Result<_, _>>()?,
                    not_values: s
                        .not_service_accounts
                        .iter()
                        .map(|v| service_account(v, ns, &w("notServiceAccounts")))
                        .collect::<Result<_, _>>()?,
                },
                ip_blocks: ips(&s.ip_blocks, &s.not_ip_blocks, &w("ipBlocks"))?,
                remote_ip_blocks: ips(
                    &s.remote_ip_blocks,
                    &s.not_remote_ip_blocks,
                    &w("remoteIpBlocks"),
                )?,
            })
        })
        .collect::<Result<_, Invalid>>()?;
    let to =
        r.to.iter()
            .enumerate()
            .map(|(i, t)| {
                let o = &t.operation;
                let w = |x: &str| format!("{at}.to[{i}].operation.{x}");
                let paths = |list: &[String], name: &str| {
                    list.iter()
                        .map(|p| PathPattern::parse(p).map_err(|e| (w(name), e)))
                        .collect::<Result<Vec<_>, _>>()
                };
                Ok(Operation {
                    hosts: field(&o.hosts, &o.not_hosts),
                    ports: Field {
                        values: o
                            .ports
                            .iter()
                            .map(|p| port(p, &w("ports")))
                            .collect::<Result<_, _>>()?,
                        not_values: o
                            .not_ports
                            .iter()
                            .map(|p| port(p, &w("notPorts")))
                            .collect::<Result<_, _>>()?,
                    },
                    methods: field(&o.methods, &o.not_methods),
                    paths: Field {
                        values: paths(&o.paths, "paths")?,
                        not_values: paths(&o.not_paths, "notPaths")?,
                    },
                })
            })
            .collect::<Result<_, Invalid>>()?;
    let when = r
        .when
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let w = format!("{at}.when[{i}]");
            let k = key(&c.key, &format!("{w}.key"))?;
            let is_ip = matches!(k, Key::SourceIp | Key::RemoteIp | Key::DestinationIp);
            if k == Key::DestinationPort {
                for v in c.values.iter().chain(&c.not_values) {
                    port(v, &format!("{w}.values"))?;
                }
            }
            Ok(Condition {
                values: if is_ip {
                    Field::default()
                } else {
                    field(&c.values, &c.not_values)
                },
                ip_values: if is_ip {
                    ips(&c.values, &c.not_values, &format!("{w}.values"))?
                } else {
                    Field::default()
                },
                key: k,
            })
        })
        .collect::<Result<_, Invalid>>()?;
    Ok(Rule { from, to, when })
}

/// Compiles one policy. Errors are `(field, message)`.
pub fn compile(p: &AuthorizationPolicy) -> Result<Policy, Invalid> {
    let ns = p.metadata.namespace.as_deref().unwrap_or("default");
    let action = match p.spec.action.as_deref().unwrap_or("ALLOW") {
        "ALLOW" => Action::Allow,
        "DENY" => Action::Deny,
        "AUDIT" => Action::Audit,
        "CUSTOM" => match &p.spec.provider {
            Some(pr) if !pr.name.is_empty() => Action::Custom(pr.name.clone()),
            _ => {
                return Err((
                    "spec.provider.name".into(),
                    "CUSTOM needs a provider".into(),
                ))
            }
        },
        other => return Err(("spec.action".into(), format!("unknown action {other:?}"))),
    };
    let rules = match &p.spec.rules {
        None => Vec::new(),
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, r)| rule(r, ns, &format!("spec.rules[{i}]")))
            .collect::<Result<_, _>>()?,
    };
    Ok(Policy {
        name: NamespacedName::new(ns, &p.metadata.name),
        action,
        dry_run: p
            .metadata
            .annotations
            .get("istio.io/dry-run")
            .map(String::as_str)
            == Some("true"),
        rules,
        matched: AtomicU64::new(0),
    })
}

/// Where a policy's `targetRef` binds, seen from the waypoint `gateway`.
pub(crate) enum Binding {
    /// The waypoint itself (its Gateway, or the `istio-waypoint` GatewayClass from the root
    /// namespace): every request.
    Waypoint,
    /// A Service (`namespace/name`).
    Service(String),
    /// A ServiceEntry (`namespace/name` of the object; its Service is named by its host).
    ServiceEntry(String),
    /// Something else (another Gateway, an unsupported kind).
    Elsewhere,
}

/// Classifies `r`, a `targetRef` of a policy in namespace `ns`.
pub(crate) fn binding(
    r: &TargetRef,
    ns: &str,
    gateway: &NamespacedName,
    root_namespace: &str,
) -> Binding {
    // Istio allows only the policy's own namespace here; another one binds nothing.
    if r.namespace.as_deref().is_some_and(|n| n != ns) {
        return Binding::Elsewhere;
    }
    match (r.group.as_deref().unwrap_or(""), r.kind.as_str()) {
        ("gateway.networking.k8s.io", "Gateway")
            if r.name == gateway.name && ns == gateway.namespace =>
        {
            Binding::Waypoint
        }
        ("gateway.networking.k8s.io", "GatewayClass")
            if r.name == "istio-waypoint" && ns == root_namespace =>
        {
            Binding::Waypoint
        }
        ("" | "core", "Service") => Binding::Service(format!("{ns}/{}", r.name)),
        ("networking.istio.io", "ServiceEntry") => {
            Binding::ServiceEntry(format!("{ns}/{}", r.name))
        }
        _ => Binding::Elsewhere,
    }
}

/// Binds the policies that apply to the waypoint `gateway`. `entries` maps each
/// ServiceEntry (`namespace/name`) to the key of the Service it became.
pub fn bind(
    policies: &[(String, AuthorizationPolicy)],
    gateway: &NamespacedName,
    root_namespace: &str,
    entries: &BTreeMap<String, Vec<String>>,
) -> Result<Policies, LocalConfigError> {
    let mut set = Policies::default();
    let mut services: BTreeMap<String, Vec<Arc<Policy>>> = BTreeMap::new();
    for (label, p) in policies {
        let ns = p.metadata.namespace.as_deref().unwrap_or("default");
        let compiled =
            Arc::new(
                compile(p).map_err(|(field, message)| LocalConfigError::Invalid {
                    object: label.clone(),
                    field,
                    message,
                })?,
            );
        let refs: Vec<&TargetRef> = p
            .spec
            .target_ref
            .iter()
            .chain(&p.spec.target_refs)
            .collect();
        if refs.is_empty() {
            let why = if p.spec.selector.is_some() {
                "selector"
            } else {
                "namespace-wide"
            };
            tracing::info!(policy = %label, kind = why, "AuthorizationPolicy is enforced by ztunnel, not this waypoint");
            continue;
        }
        for r in refs {
            match binding(r, ns, gateway, root_namespace) {
                Binding::Waypoint => set.gateway.push(compiled.clone()),
                Binding::Service(key) => services.entry(key).or_default().push(compiled.clone()),
                Binding::ServiceEntry(entry) => match entries.get(&entry) {
                    Some(keys) => {
                        for key in keys {
                            services
                                .entry(key.clone())
                                .or_default()
                                .push(compiled.clone());
                        }
                    }
                    None => {
                        tracing::debug!(policy = %label, target = %r.name, "no such ServiceEntry")
                    }
                },
                Binding::Elsewhere => {
                    tracing::debug!(policy = %label, target = %r.name, "targetRef is not this waypoint")
                }
            }
        }
    }
    set.services = services;
    Ok(set)
}

/// Logs every destination whose CUSTOM policies cannot be enforced (unknown or invalid
/// provider, several providers): istiod's rule, which this waypoint follows, is to deny
/// every request to such a destination.
pub fn report_custom(set: &Policies) {
    let targets = std::iter::once((
        "the waypoint".to_string(),
        std::borrow::Cow::Borrowed(&set.gateway[..]),
    ))
    .chain(
        set.services
            .keys()
            .map(|s| (format!("Service {s}"), set.for_target(Some(s)))),
    );
    for (target, policies) in targets {
        if let Err(why) = filters::authz::ext::custom_provider(&policies, &set.providers) {
            tracing::error!(target = %target, reason = %why, "CUSTOM AuthorizationPolicy cannot be enforced: every request to this destination is denied");
        }
    }
}

#[cfg(test)]
mod strict_tests {
    #[test]
    fn a_misspelled_field_rejects_the_policy_with_its_path() {
        let text = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: default}\nspec:\n  action: ALLOW\n  rules:\n  - from:\n    - source:\n        principalz: [cluster.local/ns/a/sa/b]\n";
        let e = crate::parse(text).unwrap_err().to_string();
        assert!(e.contains("spec.rules[0].from[0].source"), "{e}");
        assert!(e.contains("principalz"), "{e}");
    }
}
