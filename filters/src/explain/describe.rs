//! Steps as the decision code records them: what was considered, and the rule, field or
//! condition that decided. Called only while a request is explained.

use http::Request;
use serde::Serialize;

use super::{Stage, Step};
use crate::authz::attributes::Attributes;
use crate::authz::engine::{deny_like, request_header, rule_miss, trust_domain, Miss, Part};
use crate::authz::model::{Action, Key, Policy, Rule};
use crate::route::model::{Route, RouteMatch};
use crate::route::table::RouteMiss;

/// Compact JSON of a configuration fragment ([`tidy`]).
fn json(v: &impl Serialize) -> String {
    match serde_json::to_value(v) {
        Ok(v) => tidy(v).to_string(),
        Err(e) => format!("<{e}>"),
    }
}

/// A configuration fragment as a reader wants it: empty lists and unset fields left out,
/// a policy field's `values`/`not_values` pair shown as `[...]`, `{"not": [...]}` or both.
fn tidy(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            let keys: Vec<&str> = m.keys().map(String::as_str).collect();
            if keys == ["not_values", "values"] {
                let values = m["values"].clone();
                let not = m["not_values"].clone();
                let empty = |v: &Value| v.as_array().is_some_and(|a| a.is_empty());
                return match (empty(&values), empty(&not)) {
                    (false, true) => values,
                    (true, false) => serde_json::json!({ "not": not }),
                    _ => serde_json::json!({ "in": values, "not": not }),
                };
            }
            Value::Object(
                m.into_iter()
                    .filter(|(_, v)| {
                        !(v.is_null()
                            || v.as_array().is_some_and(|a| a.is_empty())
                            || v.as_object().is_some_and(|o| {
                                o.len() == 2
                                    && o.values()
                                        .all(|l| l.as_array().is_some_and(|a| a.is_empty()))
                            }))
                    })
                    .map(|(k, v)| (k, tidy(v)))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.into_iter().map(tidy).collect()),
        other => other,
    }
}

fn action(p: &Policy) -> String {
    let mut a = match &p.action {
        Action::Allow => "ALLOW".to_string(),
        Action::Deny => "DENY".to_string(),
        Action::Audit => "AUDIT".to_string(),
        Action::Custom(provider) => format!("CUSTOM, provider {provider}"),
    };
    if p.dry_run {
        a.push_str(", dry-run");
    }
    a
}

/// An AuthorizationPolicy considered: which rule matched and with which fields, or, for
/// each rule, the field that did not match and the request's value.
pub fn policy(p: &Policy, attrs: &Attributes<'_>, matched: bool) -> Step {
    let subject = format!("AuthorizationPolicy {} ({})", p.name, action(p));
    let deny = deny_like(p);
    if p.rules.is_empty() {
        return Step::new(Stage::Authorization, subject, "not matched")
            .detail("the policy has no rules: it matches nothing");
    }
    if matched {
        let (i, rule) = p
            .rules
            .iter()
            .enumerate()
            .find(|(_, r)| rule_miss(r, attrs, deny).is_none())
            .expect("a rule matched");
        return Step::new(Stage::Authorization, subject, "matched")
            .detail(format!("rule {i} matched on {}", set_fields(rule)));
    }
    let why: Vec<String> = p
        .rules
        .iter()
        .enumerate()
        .filter_map(|(i, r)| rule_miss(r, attrs, deny).map(|m| (i, r, m)))
        .map(|(i, r, m)| format!("rule {i}: {}", miss(r, m, attrs)))
        .collect();
    Step::new(Stage::Authorization, subject, "not matched").detail(why.join("; "))
}

/// The fields a rule sets (`from[0].principals, to[0].paths`), or `any request`.
fn set_fields(rule: &Rule) -> String {
    let mut out = Vec::new();
    let fields = |v: serde_json::Value, prefix: String, out: &mut Vec<String>| {
        if let serde_json::Value::Object(m) = v {
            for (k, f) in m {
                let empty = f.as_object().is_some_and(|o| {
                    o.values()
                        .all(|l| l.as_array().is_some_and(|a| a.is_empty()))
                });
                if !empty {
                    out.push(format!("{prefix}.{k} {}", tidy(f)));
                }
            }
        }
    };
    for (i, s) in rule.from.iter().enumerate() {
        fields(
            serde_json::to_value(s).unwrap_or_default(),
            format!("from[{i}]"),
            &mut out,
        );
    }
    for (i, o) in rule.to.iter().enumerate() {
        fields(
            serde_json::to_value(o).unwrap_or_default(),
            format!("to[{i}]"),
            &mut out,
        );
    }
    for (i, c) in rule.when.iter().enumerate() {
        out.push(format!("when[{i}] {:?}", c.key));
    }
    if out.is_empty() {
        "any request (the rule has no fields)".into()
    } else {
        out.join(", ")
    }
}

/// `to[0].paths {"values":["/admin*"],...} did not match "/public"`.
fn miss(rule: &Rule, m: Miss, attrs: &Attributes<'_>) -> String {
    let show = |v: Option<String>| v.map_or("(absent)".to_string(), |v| format!("{v:?}"));
    match m.part {
        Part::HttpOnTcp => "uses HTTP attributes, and the traffic is TCP".into(),
        Part::From => {
            let config = serde_json::to_value(&rule.from[m.index])
                .ok()
                .and_then(|v| v.get(m.field).cloned())
                .map(tidy)
                .unwrap_or_default();
            let n = rule.from.len();
            format!(
                "{}from[{}].{} {config} did not match {}",
                if n > 1 {
                    format!("none of {n} sources matched; ")
                } else {
                    String::new()
                },
                m.index,
                m.field,
                show(source_attribute(m.field, attrs))
            )
        }
        Part::To => {
            let config = serde_json::to_value(&rule.to[m.index])
                .ok()
                .and_then(|v| v.get(m.field).cloned())
                .map(tidy)
                .unwrap_or_default();
            let n = rule.to.len();
            format!(
                "{}to[{}].{} {config} did not match {}",
                if n > 1 {
                    format!("none of {n} operations matched; ")
                } else {
                    String::new()
                },
                m.index,
                m.field,
                show(operation_attribute(m.field, attrs))
            )
        }
        Part::When => {
            let c = &rule.when[m.index];
            let value = match &c.key {
                Key::RequestHeader(name) => {
                    attrs.http.as_ref().and_then(|h| request_header(h, name))
                }
                Key::SourcePrincipal => attrs.principal.as_deref().map(str::to_string),
                Key::SourceNamespace => attrs.namespace.as_deref().map(str::to_string),
                Key::SourceIp => attrs.source_ip.map(|ip| ip.to_string()),
                Key::RemoteIp => attrs.remote_ip.map(|ip| ip.to_string()),
                Key::DestinationIp => attrs.destination_ip.map(|ip| ip.to_string()),
                Key::DestinationPort => attrs.destination_port.map(|p| p.to_string()),
                Key::AuthPrincipal => attrs
                    .http
                    .as_ref()
                    .and_then(|h| h.auth)
                    .map(|a| a.principal.clone()),
                Key::AuthClaims(path) => attrs.http.as_ref().and_then(|h| h.auth).and_then(|a| {
                    path.iter()
                        .try_fold(&a.claims, |v, k| v.get(k))
                        .map(|v| v.to_string())
                }),
                _ => None,
            };
            let config = if c.ip_values.is_empty() {
                json(&c.values)
            } else {
                json(&c.ip_values)
            };
            format!(
                "when[{}] {:?} {config} did not match {}",
                m.index,
                c.key,
                show(value)
            )
        }
    }
}

fn source_attribute(field: &str, a: &Attributes<'_>) -> Option<String> {
    match field {
        "principals" => a.principal.as_deref().map(str::to_string),
        "request_principals" => a
            .http
            .as_ref()
            .and_then(|h| h.auth)
            .map(|j| j.principal.clone()),
        "namespaces" => a.namespace.as_deref().map(str::to_string),
        "trust_domains" => trust_domain(a.principal.as_deref()).map(str::to_string),
        "service_accounts" => a
            .namespace
            .as_ref()
            .zip(a.service_account.as_ref())
            .map(|(n, s)| format!("{n}/{s}")),
        "ip_blocks" => a.source_ip.map(|ip| ip.to_string()),
        "remote_ip_blocks" => a.remote_ip.map(|ip| ip.to_string()),
        _ => None,
    }
}

fn operation_attribute(field: &str, a: &Attributes<'_>) -> Option<String> {
    let http = a.http.as_ref();
    match field {
        "ports" => a.destination_port.map(|p| p.to_string()),
        "hosts" => http.map(|h| h.host.to_string()),
        "methods" => http.map(|h| h.method.to_string()),
        "paths" => http.map(|h| h.path.to_string()),
        _ => None,
    }
}

/// An Envoy RBAC filter policy (xDS) considered: matched, or whether its permissions or
/// its principals did not.
pub fn rbac_policy(filter: &str, name: &str, permissions: bool, principals: bool) -> Step {
    let subject = format!("RBAC {filter} policy {name}");
    match (permissions, principals) {
        (true, true) => Step::new(Stage::Authorization, subject, "matched"),
        (false, _) => Step::new(Stage::Authorization, subject, "not matched")
            .detail("no permission matched the request"),
        (true, false) => Step::new(Stage::Authorization, subject, "not matched")
            .detail("a permission matched, no principal did"),
    }
}

fn route_name(route: &Route, rule: usize) -> String {
    let r = &route.rules[rule];
    match &r.name {
        Some(n) => format!("{:?} {} rule {rule} ({n})", route.kind, route.name),
        None => format!("{:?} {} rule {rule}", route.kind, route.name),
    }
    .replace("Http ", "HTTPRoute ")
    .replace("Grpc ", "GRPCRoute ")
}

/// A higher-precedence route match that did not match, and the condition why.
pub fn route_miss<B>(
    route: &Route,
    rule: usize,
    index: usize,
    why: RouteMiss,
    req: &Request<B>,
) -> Step {
    let m: &RouteMatch = &route.rules[rule].matches[index];
    let detail = match why {
        RouteMiss::Path => format!(
            "path {} did not match {:?}",
            json(&m.path),
            req.uri().path()
        ),
        RouteMiss::Method => format!(
            "method {} did not match {}",
            m.method.as_ref().map_or("", |m| m.as_str()),
            req.method()
        ),
        RouteMiss::Header(i) => {
            let h = &m.headers[i];
            let sent: Vec<&str> = req
                .headers()
                .get_all(&h.name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            format!(
                "header {} {} did not match {}",
                h.name,
                json(&h.value),
                if sent.is_empty() {
                    "(absent)".to_string()
                } else {
                    format!("{:?}", sent.join(","))
                }
            )
        }
        RouteMiss::Query(i) => {
            let q = &m.query[i];
            format!(
                "query parameter {} {} did not match {:?}",
                q.name,
                json(&q.value),
                req.uri().query().unwrap_or("")
            )
        }
    };
    Step::new(
        Stage::Route,
        format!("{} match {index}", route_name(route, rule)),
        "not matched",
    )
    .detail(detail)
}

/// The route match that matched.
pub fn route_match(route: &Route, rule: usize, index: Option<usize>) -> Step {
    let (subject, detail) = match index {
        Some(i) => (
            format!("{} match {i}", route_name(route, rule)),
            json(&route.rules[rule].matches[i]),
        ),
        None => (
            route_name(route, rule),
            "the rule has no matches (every request)".to_string(),
        ),
    };
    Step::new(Stage::Route, subject, "selected").detail(detail)
}

/// A route filter applied, as configured.
pub fn filter(f: &crate::route::model::Filter, effect: Option<String>) -> Step {
    let v = serde_json::to_value(f).unwrap_or_default();
    let (kind, config) = match v {
        serde_json::Value::Object(m) if m.len() == 1 => {
            let (k, c) = m.into_iter().next().expect("one entry");
            // The Gateway API's names for the filters.
            let k = match k.as_str() {
                "Redirect" => "RequestRedirect".to_string(),
                "RequestHeaders" => "RequestHeaderModifier".to_string(),
                "ResponseHeaders" => "ResponseHeaderModifier".to_string(),
                "Rewrite" => "URLRewrite".to_string(),
                "Mirror" => "RequestMirror".to_string(),
                "Cors" => "CORS".to_string(),
                _ => k,
            };
            (k, tidy(c).to_string())
        }
        other => ("Filter".to_string(), tidy(other).to_string()),
    };
    let step = Step::new(Stage::Filter, kind, "applied");
    match effect {
        Some(e) => step.detail(format!("{e}; {config}")),
        None => step.detail(config),
    }
}
