//! AuthorizationPolicy, compiled: the policy model the decision logic evaluates.

use std::sync::atomic::{AtomicU64, Ordering};

use ipnet::IpNet;
use serde::Serialize;

use super::matcher::{PathPattern, ValueMatch};
use crate::model::NamespacedName;

/// What a matching policy does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Action {
    /// Allow when a rule matches; any ALLOW policy makes non-matching requests denied.
    Allow,
    /// Deny when a rule matches.
    Deny,
    /// Record only; never changes the decision.
    Audit,
    /// Ask the named external authorization provider.
    Custom(String),
}

/// One AuthorizationPolicy that applies to this waypoint.
#[derive(Debug, Serialize)]
pub struct Policy {
    /// `namespace/name`.
    pub name: NamespacedName,
    /// Action.
    pub action: Action,
    /// `istio.io/dry-run: "true"`: evaluated and logged, not enforced.
    pub dry_run: bool,
    /// Rules; empty means the policy matches nothing (`spec: {}`), a rule with no fields
    /// matches everything (`rules: [{}]`).
    pub rules: Vec<Rule>,
    /// Requests this policy matched (for metrics and logs).
    #[serde(skip)]
    pub matched: AtomicU64,
}

impl Policy {
    /// Counts a match.
    pub fn record_match(&self) {
        self.matched.fetch_add(1, Ordering::Relaxed);
    }
}

/// A rule: every present part must match.
#[derive(Debug, Default, Serialize)]
pub struct Rule {
    /// Sources; the rule needs one to match (none present means any source).
    pub from: Vec<Source>,
    /// Operations; the rule needs one to match (none present means any operation).
    pub to: Vec<Operation>,
    /// Conditions; all must match.
    pub when: Vec<Condition>,
}

/// A positive and a negative list over one attribute.
#[derive(Debug, Clone, Serialize)]
pub struct Field<T> {
    /// The attribute must match one of these (if any are given).
    pub values: Vec<T>,
    /// The attribute must match none of these (if any are given).
    pub not_values: Vec<T>,
}

impl<T> Default for Field<T> {
    fn default() -> Self {
        Self {
            values: Vec::new(),
            not_values: Vec::new(),
        }
    }
}

impl<T> Field<T> {
    /// Whether neither list is set.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty() && self.not_values.is_empty()
    }
}

/// `from.source`.
#[derive(Debug, Default, Serialize)]
pub struct Source {
    /// `principals` / `notPrincipals` (without `spiffe://`).
    pub principals: Field<ValueMatch>,
    /// `requestPrincipals` (`iss/sub`), HTTP only.
    pub request_principals: Field<ValueMatch>,
    /// `namespaces`.
    pub namespaces: Field<ValueMatch>,
    /// `trustDomains` / `notTrustDomains`: the peer principal's trust domain (before the
    /// first `/`).
    pub trust_domains: Field<ValueMatch>,
    /// `serviceAccounts` (`ns/sa` or `sa` in the policy's namespace).
    pub service_accounts: Field<(String, String)>,
    /// `ipBlocks` (the original source IP).
    pub ip_blocks: Field<IpNet>,
    /// `remoteIpBlocks` (the client IP as forwarded).
    pub remote_ip_blocks: Field<IpNet>,
}

/// `to.operation`.
#[derive(Debug, Default, Serialize)]
pub struct Operation {
    /// `hosts` (case-insensitive), HTTP only.
    pub hosts: Field<ValueMatch>,
    /// `ports`.
    pub ports: Field<u16>,
    /// `methods`, HTTP only.
    pub methods: Field<ValueMatch>,
    /// `paths` (normalized, without query), HTTP only.
    pub paths: Field<PathPattern>,
}

/// A `when` key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Key {
    /// `request.headers[name]`.
    RequestHeader(String),
    /// `source.ip`.
    SourceIp,
    /// `remote.ip`.
    RemoteIp,
    /// `source.namespace`.
    SourceNamespace,
    /// `source.principal`.
    SourcePrincipal,
    /// `source.serviceAccount`.
    SourceServiceAccount,
    /// `request.auth.principal`.
    AuthPrincipal,
    /// `request.auth.audiences`.
    AuthAudiences,
    /// `request.auth.presenter`.
    AuthPresenter,
    /// `request.auth.claims[a][b]...`.
    AuthClaims(Vec<String>),
    /// `destination.ip`.
    DestinationIp,
    /// `destination.port`.
    DestinationPort,
    /// `connection.sni`.
    ConnectionSni,
    /// `experimental.envoy.filters.*`: not available here; treated like an attribute that
    /// cannot apply.
    Unsupported(String),
}

impl Key {
    /// Whether the attribute exists only for HTTP.
    pub fn http_only(&self) -> bool {
        matches!(
            self,
            Key::RequestHeader(_)
                | Key::AuthPrincipal
                | Key::AuthAudiences
                | Key::AuthPresenter
                | Key::AuthClaims(_)
                | Key::Unsupported(_)
        )
    }
}

/// A `when` condition.
#[derive(Debug, Serialize)]
pub struct Condition {
    /// The attribute.
    pub key: Key,
    /// Its values: IP/CIDR for IP keys, numbers for ports, patterns otherwise.
    pub values: Field<ValueMatch>,
    /// For IP keys, the CIDRs.
    pub ip_values: Field<IpNet>,
}
