//! The decision: CUSTOM, then DENY, then ALLOW (no ALLOW policy means allow); AUDIT never
//! changes it; dry-run policies are evaluated and reported, not enforced.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::attributes::{Attributes, HttpAttributes};
use super::matcher::ValueMatch;
use super::model::{Action, Condition, Field, Key, Operation, Policy, Rule, Source};
use crate::explain::Trace;

/// The outcome of authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed; names the ALLOW policy that matched, if any.
    Allow(Option<String>),
    /// Denied; names the policy responsible (a DENY that matched, or "no ALLOW matched").
    Deny(String),
}

impl Verdict {
    /// Whether the request may proceed.
    pub fn allowed(&self) -> bool {
        matches!(self, Verdict::Allow(_))
    }
}

/// A decision with its shadow (dry-run) results, for logging.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The enforced verdict.
    pub verdict: Verdict,
    /// What the dry-run policies would have decided.
    pub dry_run: Option<Verdict>,
    /// AUDIT policies that matched.
    pub audited: Vec<String>,
}

/// Evaluates `policies` for one request or connection. `custom` decides CUSTOM policies
/// (the external authorization call); `None` fails closed.
pub fn evaluate(
    policies: &[Arc<Policy>],
    attrs: &Attributes<'_>,
    custom: Option<&dyn Fn(&str) -> bool>,
) -> Decision {
    evaluate_traced(policies, attrs, custom, Trace::OFF)
}

/// [`evaluate`], recording every policy considered (with the rule and field that matched
/// or did not) into `trace`. An explained request does not count policy matches.
pub fn evaluate_traced(
    policies: &[Arc<Policy>],
    attrs: &Attributes<'_>,
    custom: Option<&dyn Fn(&str) -> bool>,
    trace: Trace<'_>,
) -> Decision {
    let audited = policies
        .iter()
        .filter(|p| p.action == Action::Audit && considered(p, attrs, trace))
        .map(|p| p.name.to_string())
        .collect();
    let shadow = policies.iter().any(|p| p.dry_run);
    Decision {
        verdict: decide(policies, false, attrs, custom, !trace.on(), trace),
        dry_run: shadow.then(|| decide(policies, true, attrs, custom, false, trace)),
        audited,
    }
}

/// Whether `p` matches, recorded into `trace`.
fn considered(p: &Policy, attrs: &Attributes<'_>, trace: Trace<'_>) -> bool {
    let matched = policy_matches(p, attrs);
    trace.step(|| crate::explain::describe::policy(p, attrs, matched));
    matched
}

/// The verdict of the policies whose `dry_run` flag is `dry_run`: CUSTOM, then DENY, then
/// ALLOW (none present: allowed; present but none matching: denied).
fn decide(
    policies: &[Arc<Policy>],
    dry_run: bool,
    attrs: &Attributes<'_>,
    custom: Option<&dyn Fn(&str) -> bool>,
    record: bool,
    trace: Trace<'_>,
) -> Verdict {
    let selected = || policies.iter().filter(move |p| p.dry_run == dry_run);
    for p in selected() {
        let Action::Custom(provider) = &p.action else {
            continue;
        };
        if considered(p, attrs, trace) && !custom.is_some_and(|f| f(provider)) {
            return Verdict::Deny(p.name.to_string());
        }
    }
    for p in selected().filter(|p| p.action == Action::Deny) {
        if considered(p, attrs, trace) {
            if record {
                p.record_match();
            }
            return Verdict::Deny(p.name.to_string());
        }
    }
    let mut any_allow = false;
    for p in selected().filter(|p| p.action == Action::Allow) {
        any_allow = true;
        if considered(p, attrs, trace) {
            if record {
                p.record_match();
            }
            return Verdict::Allow(Some(p.name.to_string()));
        }
    }
    if any_allow {
        Verdict::Deny("no ALLOW policy matched".into())
    } else {
        Verdict::Allow(None)
    }
}

/// Whether any rule of `p` matches. CUSTOM rules are built like DENY ones (istiod generates
/// them as DENY shadow rules): on TCP their HTTP-only fields are ignored, not the rule.
pub fn policy_matches(p: &Policy, attrs: &Attributes<'_>) -> bool {
    p.rules.iter().any(|r| rule_matches(r, attrs, deny_like(p)))
}

/// Whether `p` is evaluated like a DENY policy (DENY and CUSTOM).
pub fn deny_like(p: &Policy) -> bool {
    matches!(p.action, Action::Deny | Action::Custom(_))
}

/// Whether `rule` matches. On TCP, a rule using HTTP-only attributes never matches in an
/// ALLOW or AUDIT policy, and ignores those attributes in a DENY or CUSTOM policy (`deny`)
/// (Istio's rule).
pub fn rule_matches(rule: &Rule, attrs: &Attributes<'_>, deny: bool) -> bool {
    rule_miss(rule, attrs, deny).is_none()
}

/// The part of a rule that did not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The whole rule: it uses HTTP-only attributes and the traffic is TCP.
    HttpOnTcp,
    /// `from[index]` (the first source, when none matched).
    From,
    /// `to[index]` (the first operation, when none matched).
    To,
    /// `when[index]`.
    When,
}

/// Why a rule did not match: the part, its index and the field (named as the policy
/// model serializes it). Built without allocating, so deciding is not slowed by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Miss {
    /// The part.
    pub part: Part,
    /// The index within `from`, `to` or `when`.
    pub index: usize,
    /// The field (`principals`, `paths`, ...); `key` for a `when` condition.
    pub field: &'static str,
}

/// Why `rule` does not match (`None`: it matches); see [`rule_matches`].
pub fn rule_miss(rule: &Rule, attrs: &Attributes<'_>, deny: bool) -> Option<Miss> {
    let tcp = attrs.http.is_none();
    if tcp && !deny && rule_uses_http(rule) {
        return Some(Miss {
            part: Part::HttpOnTcp,
            index: 0,
            field: "",
        });
    }
    // Only reached on TCP for DENY rules: their HTTP-only fields are ignored.
    let ignore_http = tcp;
    let from = all_miss(&rule.from, |s| source_miss(s, attrs, ignore_http));
    if let Some(field) = from {
        return Some(Miss {
            part: Part::From,
            index: 0,
            field,
        });
    }
    let to = all_miss(&rule.to, |o| operation_miss(o, attrs, ignore_http));
    if let Some(field) = to {
        return Some(Miss {
            part: Part::To,
            index: 0,
            field,
        });
    }
    rule.when
        .iter()
        .position(|c| !condition_matches(c, attrs))
        .map(|index| Miss {
            part: Part::When,
            index,
            field: "key",
        })
}

fn rule_uses_http(rule: &Rule) -> bool {
    rule.from.iter().any(|s| !s.request_principals.is_empty())
        || rule
            .to
            .iter()
            .any(|o| !o.hosts.is_empty() || !o.methods.is_empty() || !o.paths.is_empty())
        || rule.when.iter().any(|c| c.key.http_only())
}

/// A string field over an optional attribute; an absent attribute satisfies only `not`.
fn str_field(f: &Field<ValueMatch>, attr: Option<&str>, ignore_case: bool) -> bool {
    let pos = f.values.is_empty()
        || attr.is_some_and(|a| f.values.iter().any(|v| v.matches(a, ignore_case)));
    let neg = f.not_values.is_empty()
        || attr.is_none_or(|a| !f.not_values.iter().any(|v| v.matches(a, ignore_case)));
    pos && neg
}

/// Like [`str_field`] over several values (a JWT audience list, a list claim).
fn multi_field(f: &Field<ValueMatch>, attrs: &[String]) -> bool {
    let any = |vs: &[ValueMatch]| attrs.iter().any(|a| vs.iter().any(|v| v.matches(a, false)));
    (f.values.is_empty() || any(&f.values)) && (f.not_values.is_empty() || !any(&f.not_values))
}

fn ip_field(f: &Field<IpNet>, ip: Option<IpAddr>) -> bool {
    let pos = f.values.is_empty() || ip.is_some_and(|ip| f.values.iter().any(|n| n.contains(&ip)));
    let neg = f.not_values.is_empty()
        || ip.is_none_or(|ip| !f.not_values.iter().any(|n| n.contains(&ip)));
    pos && neg
}

/// The first field of `s` that does not match (`None`: the source matches).
fn source_miss(s: &Source, a: &Attributes<'_>, ignore_http: bool) -> Option<&'static str> {
    let http = a.http.as_ref();
    let sa = match (&a.namespace, &a.service_account) {
        (Some(ns), Some(sa)) => Some((&**ns, &**sa)),
        _ => None,
    };
    let listed = |list: &[(String, String)], (ns, sa): (&str, &str)| {
        list.iter().any(|(n, s)| n == ns && s == sa)
    };
    if !str_field(&s.principals, a.principal.as_deref(), false) {
        return Some("principals");
    }
    if !(s.request_principals.is_empty()
        || ignore_http
        || str_field(
            &s.request_principals,
            http.and_then(|h| h.auth).map(|j| j.principal.as_str()),
            false,
        ))
    {
        return Some("request_principals");
    }
    if !str_field(&s.namespaces, a.namespace.as_deref(), false) {
        return Some("namespaces");
    }
    if !str_field(
        &s.trust_domains,
        trust_domain(a.principal.as_deref()),
        false,
    ) {
        return Some("trust_domains");
    }
    let sa_pos = s.service_accounts.values.is_empty()
        || sa.is_some_and(|x| listed(&s.service_accounts.values, x));
    let sa_neg = s.service_accounts.not_values.is_empty()
        || sa.is_none_or(|x| !listed(&s.service_accounts.not_values, x));
    if !(sa_pos && sa_neg) {
        return Some("service_accounts");
    }
    if !ip_field(&s.ip_blocks, a.source_ip) {
        return Some("ip_blocks");
    }
    if !ip_field(&s.remote_ip_blocks, a.remote_ip) {
        return Some("remote_ip_blocks");
    }
    None
}

/// The trust domain of a principal (`td/ns/x/sa/y` without `spiffe://`): what precedes the
/// first `/`; none when the principal has no `/` or starts with one.
pub(crate) fn trust_domain(principal: Option<&str>) -> Option<&str> {
    principal
        .and_then(|p| p.split_once('/'))
        .map(|(td, _)| td)
        .filter(|td| !td.is_empty())
}

/// A request header as Envoy's RBAC sees it: pseudo-headers come from the request
/// (`:method`, `:authority` the host, `:path` with its query); several values of one header
/// are joined with `,`.
pub(crate) fn request_header(h: &HttpAttributes<'_>, name: &str) -> Option<String> {
    match name {
        ":method" => Some(h.method.to_string()),
        ":authority" => Some(h.host.to_string()),
        ":path" => Some(match h.query {
            Some(q) => format!("{}?{q}", h.path),
            None => h.path.to_string(),
        }),
        _ if name.starts_with(':') => None,
        _ => {
            // Every value counts, including ones with bytes outside visible ASCII (Envoy
            // compares the raw bytes; `to_str` would drop such a value).
            let vals: Vec<String> = h
                .headers
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            (!vals.is_empty()).then(|| vals.join(","))
        }
    }
}

/// The first field of `o` that does not match (`None`: the operation matches).
fn operation_miss(o: &Operation, a: &Attributes<'_>, ignore_http: bool) -> Option<&'static str> {
    let http = a.http.as_ref();
    let port_pos = o.ports.values.is_empty()
        || a.destination_port
            .is_some_and(|p| o.ports.values.contains(&p));
    let port_neg = o.ports.not_values.is_empty()
        || a.destination_port
            .is_none_or(|p| !o.ports.not_values.contains(&p));
    let paths = &o.paths;
    let path = http.map(|h| h.path);
    let path_pos =
        paths.values.is_empty() || path.is_some_and(|p| paths.values.iter().any(|v| v.matches(p)));
    let path_neg = paths.not_values.is_empty()
        || path.is_none_or(|p| !paths.not_values.iter().any(|v| v.matches(p)));
    if !(port_pos && port_neg) {
        return Some("ports");
    }
    if ignore_http {
        return None;
    }
    if !(o.hosts.is_empty() || str_field(&o.hosts, http.map(|h| h.host), true)) {
        return Some("hosts");
    }
    if !(o.methods.is_empty() || str_field(&o.methods, http.map(|h| h.method), false)) {
        return Some("methods");
    }
    if !(paths.is_empty() || (path_pos && path_neg)) {
        return Some("paths");
    }
    None
}

fn claim<'v>(claims: &'v serde_json::Value, path: &[String]) -> Option<&'v serde_json::Value> {
    path.iter().try_fold(claims, |v, k| v.get(k))
}

pub(crate) fn condition_matches(c: &Condition, a: &Attributes<'_>) -> bool {
    let http = a.http.as_ref();
    let auth = http.and_then(|h| h.auth);
    if a.http.is_none() && c.key.http_only() {
        // Only reached in DENY policies (ALLOW rules with HTTP keys were dropped): ignore.
        return true;
    }
    match &c.key {
        Key::SourceIp => ip_field(&c.ip_values, a.source_ip),
        Key::RemoteIp => ip_field(&c.ip_values, a.remote_ip),
        Key::DestinationIp => ip_field(&c.ip_values, a.destination_ip),
        Key::SourceNamespace => str_field(&c.values, a.namespace.as_deref(), false),
        Key::SourcePrincipal => str_field(&c.values, a.principal.as_deref(), false),
        Key::SourceServiceAccount => {
            let sa = a
                .namespace
                .as_ref()
                .zip(a.service_account.as_ref())
                .map(|(n, s)| format!("{n}/{s}"));
            str_field(&c.values, sa.as_deref(), false)
        }
        Key::DestinationPort => str_field(
            &c.values,
            a.destination_port.map(|p| p.to_string()).as_deref(),
            false,
        ),
        Key::ConnectionSni => str_field(&c.values, a.sni.as_deref(), false),
        Key::RequestHeader(name) => {
            let value = http.and_then(|h| request_header(h, name));
            str_field(&c.values, value.as_deref(), false)
        }
        Key::AuthPrincipal => str_field(&c.values, auth.map(|j| j.principal.as_str()), false),
        Key::AuthPresenter => {
            str_field(&c.values, auth.and_then(|j| j.presenter.as_deref()), false)
        }
        Key::AuthAudiences => match auth {
            Some(j) => multi_field(&c.values, &j.audiences),
            None => str_field(&c.values, None, false),
        },
        Key::AuthClaims(path) => {
            let values: Vec<String> = match auth.and_then(|j| claim(&j.claims, path)) {
                Some(serde_json::Value::String(s)) => vec![s.clone()],
                Some(serde_json::Value::Array(items)) => items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
                // Istio matches string and list-of-string claims only (its generated RBAC
                // compares the JWT payload with string matchers): a boolean or number claim
                // is as good as absent.
                _ => Vec::new(),
            };
            if values.is_empty() {
                str_field(&c.values, None, false)
            } else {
                multi_field(&c.values, &values)
            }
        }
        Key::Unsupported(_) => str_field(&c.values, None, false),
    }
}

/// When none of `items` matches (an empty list matches), the field the first one missed
/// on; `None` as soon as one matches.
fn all_miss<T>(items: &[T], miss: impl Fn(&T) -> Option<&'static str>) -> Option<&'static str> {
    let mut first = None;
    for item in items {
        match miss(item) {
            None => return None,
            Some(f) => {
                first.get_or_insert(f);
            }
        }
    }
    first
}
