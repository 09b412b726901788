//! Evaluation with Envoy's semantics, over the waypoint's [`Attributes`].
//!
//! How Envoy's inputs map onto what a waypoint knows:
//!
//! | Envoy input | waypoint attribute |
//! | --- | --- |
//! | `authenticated.principal_name`, filter state `io.istio.peer_principal` | `spiffe://` + HBONE peer principal |
//! | `direct_remote_ip`, `source_ip` | source IP |
//! | `remote_ip` | remote (client) IP |
//! | header `:authority` / `:method` / `:path` | host / method / path with `?query` |
//! | other headers | request headers, several values joined with `,` |
//! | `url_path`, `uri_template` | path without query |
//! | `destination_ip`, `destination_port`(`_range`) | destination IP and port |
//! | `requested_server_name` | SNI, empty when none |
//! | metadata `envoy.filters.http.jwt_authn` `payload.<claim>...` | the validated JWT's claims |
//! | metadata `istio_authn` `request.auth.principal` / `audiences` / `presenter` / `claims` | the JWT's `iss/sub`, `aud`, `azp`, claims |
//!
//! Anything else (another metadata namespace, another filter state key) is absent, as it is
//! in Envoy when no filter wrote it. On TCP there are no headers, path or metadata.

use crate::explain::Trace;
use std::borrow::Cow;
use std::net::IpAddr;

use serde_json::Value;

use super::model::{
    Action, Cidr, DoubleMatcher, HeaderMatch, HeaderMatcher, MetadataMatcher, PathSegment,
    Permission, Policy, Principal, Rbac, RbacConfig, ValueMatcher,
};
use crate::authz::Attributes;

/// The filter state key Istio's waypoint RBAC uses for the peer identity.
pub const PEER_PRINCIPAL_KEY: &str = "io.istio.peer_principal";
/// The dynamic metadata namespace of Envoy's JWT filter.
pub const JWT_AUTHN_FILTER: &str = "envoy.filters.http.jwt_authn";
/// The dynamic metadata namespace of Istio's authentication filter.
pub const ISTIO_AUTHN_FILTER: &str = "istio_authn";

/// One request (or connection) as RBAC sees it. Matching borrows from the request
/// wherever it can: only the `spiffe://` principal, a `:path` with a query, a header sent
/// several times and `istio_authn` values are built.
#[derive(Debug)]
pub struct RbacInput<'a> {
    attrs: &'a Attributes<'a>,
    spiffe: Option<Cow<'a, str>>,
    path_with_query: Option<Cow<'a, str>>,
}

impl<'a> RbacInput<'a> {
    /// Wraps `attrs` (computing the derived inputs once).
    pub fn new(attrs: &'a Attributes<'a>) -> Self {
        Self {
            spiffe: match (&attrs.principal_uri, &attrs.principal) {
                (Some(uri), _) => Some(Cow::Borrowed(uri.as_ref())),
                (None, Some(p)) => {
                    let mut id = String::with_capacity("spiffe://".len() + p.len());
                    id.push_str("spiffe://");
                    id.push_str(p);
                    Some(Cow::Owned(id))
                }
                (None, None) => None,
            },
            path_with_query: attrs
                .http
                .as_ref()
                .map(|h| match (h.path_and_query, h.query) {
                    (Some(pq), _) => Cow::Borrowed(pq),
                    (None, Some(q)) => Cow::Owned(format!("{}?{q}", h.path)),
                    (None, None) => Cow::Borrowed(h.path),
                }),
            attrs,
        }
    }

    /// The header as Envoy sees it: pseudo-headers from the request line, others joined
    /// with `,`; `None` when absent (always on TCP).
    fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        let h = self.attrs.http.as_ref()?;
        match name {
            ":authority" => Some(Cow::Borrowed(h.host)),
            ":method" => Some(Cow::Borrowed(h.method)),
            ":path" => self.path_with_query.as_deref().map(Cow::Borrowed),
            _ if name.starts_with(':') => None,
            _ => {
                let text = |v: &'a http::HeaderValue| String::from_utf8_lossy(v.as_bytes());
                let all = h.headers.get_all(name);
                let mut values = all.iter();
                let first = values.next()?;
                if values.next().is_none() {
                    return Some(text(first));
                }
                let mut joined = String::with_capacity(all.iter().map(|v| v.len() + 1).sum());
                for (i, v) in all.iter().enumerate() {
                    if i > 0 {
                        joined.push(',');
                    }
                    joined.push_str(&text(v));
                }
                Some(Cow::Owned(joined))
            }
        }
    }

    fn url_path(&self) -> Option<&str> {
        self.attrs.http.as_ref().map(|h| h.path)
    }

    /// Whether `matches` holds for the dynamic metadata at `filter`/`path` (`None`: absent
    /// or null). The JWT's claims are walked in place, not copied.
    fn metadata_is(
        &self,
        filter: &str,
        path: &[PathSegment],
        matches: impl FnOnce(Option<&Value>) -> bool,
    ) -> bool {
        let Some(auth) = self.attrs.http.as_ref().and_then(|h| h.auth) else {
            return matches(None);
        };
        let (root, rest): (Cow<'_, Value>, &[PathSegment]) = match filter {
            JWT_AUTHN_FILTER => match path.split_first() {
                Some((k, rest)) if k.key == "payload" => (Cow::Borrowed(&auth.claims), rest),
                _ => return matches(None),
            },
            ISTIO_AUTHN_FILTER => {
                let Some((k, rest)) = path.split_first() else {
                    return matches(None);
                };
                let v = match k.key.as_str() {
                    "request.auth.principal" => Value::String(auth.principal.clone()),
                    "request.auth.audiences" => {
                        Value::Array(auth.audiences.iter().cloned().map(Value::String).collect())
                    }
                    "request.auth.presenter" => match &auth.presenter {
                        Some(p) => Value::String(p.clone()),
                        None => return matches(None),
                    },
                    "request.auth.claims" => return walk(&auth.claims, rest, matches),
                    _ => return matches(None),
                };
                (Cow::Owned(v), rest)
            }
            _ => return matches(None),
        };
        walk(&root, rest, matches)
    }

    fn filter_state(&self, key: &str) -> Option<&str> {
        match key {
            PEER_PRINCIPAL_KEY => self.spiffe.as_deref(),
            _ => None,
        }
    }
}

/// Follows `path` from `root` and applies `matches` to what is there (`None`: absent or
/// null).
fn walk(root: &Value, path: &[PathSegment], matches: impl FnOnce(Option<&Value>) -> bool) -> bool {
    let found = path
        .iter()
        .try_fold(root, |v, k| v.get(&k.key))
        .filter(|v| !v.is_null());
    matches(found)
}

fn cidr(c: &Cidr, ip: Option<IpAddr>) -> bool {
    ip.is_some_and(|ip| c.0.contains(&ip))
}

/// Envoy's header matching: an absent header fails every value comparison (inverted or
/// not) unless `treat_missing_as_empty`; only `present_match` can match it.
pub fn header_matches(m: &HeaderMatcher, input: &RbacInput<'_>) -> bool {
    let value = match input.header(&m.name) {
        Some(v) => v,
        None if m.treat_missing_as_empty => Cow::Borrowed(""),
        None => {
            return match m.kind {
                HeaderMatch::Present(present) => present == m.invert,
                _ => false,
            }
        }
    };
    let v: &str = &value;
    let matched = match &m.kind {
        HeaderMatch::Exact(e) => e.is_empty() || v == e,
        HeaderMatch::Regex(r) => r.is_match(v),
        HeaderMatch::Range { start, end } => {
            v.parse::<i64>().is_ok_and(|n| n >= *start && n < *end)
        }
        HeaderMatch::Present(p) => *p,
        HeaderMatch::Prefix(p) => v.starts_with(p.as_str()),
        HeaderMatch::Suffix(s) => v.ends_with(s.as_str()),
        HeaderMatch::Contains(c) => v.contains(c.as_str()),
        HeaderMatch::String(s) => s.matches(v),
    };
    matched != m.invert
}

/// Envoy's value matching on a metadata value (`None` is absent/null).
pub fn value_matches(m: &ValueMatcher, v: Option<&Value>) -> bool {
    match m {
        ValueMatcher::NullMatch(_) => v.is_none_or(Value::is_null),
        ValueMatcher::PresentMatch(p) => *p == v.is_some_and(|v| !v.is_null()),
        ValueMatcher::StringMatch(s) => matches!(v, Some(Value::String(x)) if s.matches(x)),
        ValueMatcher::BoolMatch(b) => matches!(v, Some(Value::Bool(x)) if x == b),
        ValueMatcher::DoubleMatch(d) => match v.and_then(Value::as_f64) {
            Some(x) => match d {
                DoubleMatcher::Exact(e) => x == *e,
                DoubleMatcher::Range(r) => x >= r.start && x < r.end,
            },
            None => false,
        },
        ValueMatcher::ListMatch(l) => match v {
            Some(Value::Array(items)) => items.iter().any(|i| value_matches(&l.one_of, Some(i))),
            _ => false,
        },
        ValueMatcher::OrMatch(o) => o.value_matchers.iter().any(|m| value_matches(m, v)),
    }
}

fn metadata_matches(m: &MetadataMatcher, input: &RbacInput<'_>) -> bool {
    input.metadata_is(&m.filter, &m.path, |v| value_matches(&m.value, v)) != m.invert
}

/// Whether `p` matches.
pub fn permission_matches(p: &Permission, input: &RbacInput<'_>) -> bool {
    let a = input.attrs;
    match p {
        Permission::AndRules(s) => s.rules.iter().all(|r| permission_matches(r, input)),
        Permission::OrRules(s) => s.rules.iter().any(|r| permission_matches(r, input)),
        Permission::Any(_) => true,
        Permission::Header(h) => header_matches(h, input),
        Permission::UrlPath(m) => input.url_path().is_some_and(|p| m.path.matches(p)),
        Permission::DestinationIp(c) => cidr(c, a.destination_ip),
        Permission::DestinationPort(port) => a.destination_port.map(u32::from) == Some(*port),
        Permission::DestinationPortRange(r) => a
            .destination_port
            .is_some_and(|p| i64::from(p) >= r.start && i64::from(p) < r.end),
        Permission::Metadata(m) => metadata_matches(m, input),
        Permission::NotRule(r) => !permission_matches(r, input),
        Permission::RequestedServerName(m) => m.matches(a.sni.as_deref().unwrap_or("")),
        Permission::UriTemplate(t) => input.url_path().is_some_and(|p| t.template.matches(p)),
    }
}

/// Whether `p` matches.
pub fn principal_matches(p: &Principal, input: &RbacInput<'_>) -> bool {
    let a = input.attrs;
    match p {
        Principal::AndIds(s) => s.ids.iter().all(|i| principal_matches(i, input)),
        Principal::OrIds(s) => s.ids.iter().any(|i| principal_matches(i, input)),
        Principal::Any(_) => true,
        Principal::Authenticated(auth) => match (&input.spiffe, &auth.principal_name) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(id), Some(m)) => m.matches(id),
        },
        Principal::SourceIp(c) | Principal::DirectRemoteIp(c) => cidr(c, a.source_ip),
        Principal::RemoteIp(c) => cidr(c, a.remote_ip),
        Principal::Header(h) => header_matches(h, input),
        Principal::UrlPath(m) => input.url_path().is_some_and(|p| m.path.matches(p)),
        Principal::Metadata(m) => metadata_matches(m, input),
        Principal::FilterState(f) => input
            .filter_state(&f.key)
            .is_some_and(|v| f.string_match.matches(v)),
        Principal::NotId(i) => !principal_matches(i, input),
    }
}

/// Whether a policy matches: any permission and any principal.
pub fn policy_matches(p: &Policy, input: &RbacInput<'_>) -> bool {
    p.permissions.iter().any(|x| permission_matches(x, input))
        && p.principals.iter().any(|x| principal_matches(x, input))
}

/// The result of one rule set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineResult {
    /// Whether the action lets the request through.
    pub allowed: bool,
    /// The first matching policy, by name (the effective policy id).
    pub policy: Option<String>,
}

impl Rbac {
    /// The first policy (in name order) that matches.
    pub fn matching_policy(&self, input: &RbacInput<'_>) -> Option<&str> {
        self.matching_policy_traced(input, "", Trace::OFF)
    }

    /// [`Rbac::matching_policy`], recording each policy considered (of `filter`) into
    /// `trace`.
    pub fn matching_policy_traced(
        &self,
        input: &RbacInput<'_>,
        filter: &str,
        trace: Trace<'_>,
    ) -> Option<&str> {
        self.policies
            .iter()
            .find(|(name, p)| {
                let matched = policy_matches(p, input);
                trace.step(|| {
                    let permissions = p.permissions.iter().any(|x| permission_matches(x, input));
                    let principals = p.principals.iter().any(|x| principal_matches(x, input));
                    crate::explain::describe::rbac_policy(filter, name, permissions, principals)
                });
                matched
            })
            .map(|(n, _)| n.as_str())
    }

    /// Evaluates the rule set: ALLOW lets through only on a match, DENY only without one,
    /// LOG always.
    pub fn evaluate(&self, input: &RbacInput<'_>) -> EngineResult {
        self.evaluate_traced(input, "", Trace::OFF)
    }

    fn evaluate_traced(
        &self,
        input: &RbacInput<'_>,
        filter: &str,
        trace: Trace<'_>,
    ) -> EngineResult {
        let policy = self
            .matching_policy_traced(input, filter, trace)
            .map(str::to_string);
        let allowed = match self.action {
            Action::Allow => policy.is_some(),
            Action::Deny => policy.is_none(),
            Action::Log => true,
        };
        EngineResult { allowed, policy }
    }
}

/// The result of one RBAC filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterResult {
    /// The enforced rules' result; `None` when the filter has no `rules`.
    pub enforced: Option<EngineResult>,
    /// The shadow rules' result, with the filter's shadow stat prefix.
    pub shadow: Option<(String, EngineResult)>,
}

impl FilterResult {
    /// Whether this filter lets the request through.
    pub fn allowed(&self) -> bool {
        self.enforced.as_ref().is_none_or(|e| e.allowed)
    }
}

impl RbacConfig {
    /// Evaluates the enforced and the shadow rules.
    pub fn evaluate(&self, input: &RbacInput<'_>) -> FilterResult {
        self.evaluate_traced(input, Trace::OFF)
    }

    /// [`RbacConfig::evaluate`], recording the enforced rules' policies into `trace`.
    pub fn evaluate_traced(&self, input: &RbacInput<'_>, trace: Trace<'_>) -> FilterResult {
        let filter = || {
            let action = self.rules.as_ref().map(|r| r.action);
            format!("{:?}", action.unwrap_or_default()).to_uppercase()
        };
        FilterResult {
            enforced: self.rules.as_ref().map(|r| {
                if trace.on() {
                    r.evaluate_traced(input, &filter(), trace)
                } else {
                    r.evaluate(input)
                }
            }),
            shadow: self
                .shadow_rules
                .as_ref()
                .map(|r| (self.shadow_rules_stat_prefix.clone(), r.evaluate(input))),
        }
    }
}

/// The key suffix of the shadow rules' matched policy in Envoy's RBAC dynamic metadata.
pub const SHADOW_POLICY_ID: &str = "shadow_effective_policy_id";
/// The key suffix of the shadow rules' result (`allowed` / `denied`).
pub const SHADOW_ENGINE_RESULT: &str = "shadow_engine_result";

impl FilterResult {
    /// The dynamic metadata Envoy's RBAC filter records for its shadow rules (under the
    /// filter's name): `<prefix>shadow_effective_policy_id` when a shadow policy matched and
    /// `<prefix>shadow_engine_result` (`allowed` or `denied`). Istio's access logs and its
    /// ext_authz filter (`filter_enabled_metadata`: `istio_ext_authz_shadow_effective_policy_id`
    /// with prefix `istio-ext-authz`) read them.
    pub fn shadow_metadata(&self) -> Vec<(String, String)> {
        let Some((prefix, r)) = &self.shadow else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if let Some(p) = &r.policy {
            out.push((format!("{prefix}{SHADOW_POLICY_ID}"), p.clone()));
        }
        let result = if r.allowed { "allowed" } else { "denied" };
        out.push((
            format!("{prefix}{SHADOW_ENGINE_RESULT}"),
            result.to_string(),
        ));
        out
    }
}

/// The decision of a chain of RBAC filters (Istio emits CUSTOM, DENY, ALLOW, AUDIT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainDecision {
    /// Whether every filter let the request through.
    pub allowed: bool,
    /// The filter (index) and policy that denied, if one did (`None` as policy: an ALLOW
    /// rule set where nothing matched).
    pub denied_by: Option<(usize, Option<String>)>,
    /// Every enforced policy that matched, by filter index (for logs and metrics).
    pub matched: Vec<(usize, String)>,
    /// Shadow results (stat prefix, result) of the filters evaluated.
    pub shadow: Vec<(usize, String, EngineResult)>,
}

impl ChainDecision {
    /// The shadow metadata of every filter evaluated, in order (see
    /// [`FilterResult::shadow_metadata`]).
    pub fn shadow_metadata(&self) -> Vec<(String, String)> {
        self.shadow
            .iter()
            .flat_map(|(_, prefix, r)| {
                FilterResult {
                    enforced: None,
                    shadow: Some((prefix.clone(), r.clone())),
                }
                .shadow_metadata()
            })
            .collect()
    }

    /// Whether a shadow policy whose name starts with `prefix` matched: how Istio gates its
    /// ext_authz filter on the CUSTOM policies' shadow rules (prefix `istio-ext-authz`).
    pub fn shadow_matched(&self, prefix: &str) -> bool {
        self.shadow
            .iter()
            .any(|(_, _, r)| r.policy.as_deref().is_some_and(|p| p.starts_with(prefix)))
    }
}

/// Evaluates `filters` in order; the first denying filter ends the chain (as in Envoy, a
/// later filter never sees the request). LOG actions and shadow rules never deny.
pub fn evaluate_chain<'c>(
    filters: impl IntoIterator<Item = &'c RbacConfig>,
    input: &RbacInput<'_>,
) -> ChainDecision {
    let mut out = ChainDecision {
        allowed: true,
        denied_by: None,
        matched: Vec::new(),
        shadow: Vec::new(),
    };
    for (i, f) in filters.into_iter().enumerate() {
        let r = f.evaluate(input);
        if let Some((prefix, s)) = r.shadow.clone() {
            out.shadow.push((i, prefix, s));
        }
        if let Some(e) = &r.enforced {
            if let Some(p) = &e.policy {
                out.matched.push((i, p.clone()));
            }
            if !e.allowed {
                out.allowed = false;
                out.denied_by = Some((i, e.policy.clone()));
                break;
            }
        }
    }
    out
}
