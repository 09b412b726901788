//! Envoy's RBAC configuration as a domain model: `envoy.config.rbac.v3.RBAC` inside the
//! HTTP (`envoy.extensions.filters.http.rbac.v3.RBAC`) or network
//! (`envoy.extensions.filters.network.rbac.v3.RBAC`) filter config.
//!
//! The model is built only from protobuf, by `xds::translate::rbac`, which rejects what it
//! cannot evaluate and validates what the types below assume (one match kind per matcher,
//! compiled regexes and templates, well-formed CIDRs); test fixtures in proto-JSON/YAML go
//! through the same converter (`xds::translate::rbac::from_proto_json`).

use std::collections::BTreeMap;

use ipnet::IpNet;

use super::string_match::{SafeRegex, StringMatcher};
use super::uri_template::UriTemplate;

/// The type URL of the HTTP RBAC filter config.
pub const HTTP_RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
/// The type URL of the network RBAC filter config.
pub const NETWORK_RBAC_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";

/// Which filter a config is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterKind {
    /// `envoy.filters.http.rbac`: per request.
    Http,
    /// `envoy.filters.network.rbac`: per connection.
    Network,
}

/// The RBAC filter config (HTTP or network).
#[derive(Debug, Clone)]
pub struct RbacConfig {
    /// HTTP or network, from `@type`.
    pub kind: FilterKind,
    /// Enforced rules; absent means the filter enforces nothing.
    pub rules: Option<Rbac>,
    /// Shadow rules: evaluated and reported, never enforced.
    pub shadow_rules: Option<Rbac>,
    /// Prefix of the shadow result's metadata keys and stats
    /// (`<prefix>shadow_effective_policy_id`, `<prefix>shadow_engine_result`).
    pub shadow_rules_stat_prefix: String,
    /// Prefix of the enforced rules' stats (HTTP).
    pub rules_stat_prefix: String,
    /// Stat prefix (network; required there by Envoy).
    pub stat_prefix: String,
    /// Per-policy stats (HTTP).
    pub track_per_rule_stats: bool,
    /// Network: `ONE_TIME_ON_FIRST_BYTE` (default) or `CONTINUOUS`; the waypoint decides
    /// once per connection either way.
    pub enforcement_type: Option<EnforcementType>,
}

/// Network RBAC enforcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnforcementType {
    /// Decide on the first byte.
    OneTimeOnFirstByte,
    /// Decide on every data chunk.
    Continuous,
}

/// What a matching policy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Action {
    /// Allowed only if a policy matches.
    #[default]
    Allow,
    /// Denied if a policy matches.
    Deny,
    /// Always allowed; a match is only recorded.
    Log,
}

/// `envoy.config.rbac.v3.RBAC`.
#[derive(Debug, Clone, Default)]
pub struct Rbac {
    /// The action of a match.
    pub action: Action,
    /// Policies by name; evaluated in name order (the first match is the effective policy).
    pub policies: BTreeMap<String, Policy>,
}

/// A policy: matches when any permission and any principal match.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// What is asked for (OR).
    pub permissions: Vec<Permission>,
    /// Who asks (OR).
    pub principals: Vec<Principal>,
}

/// `any: true` (Envoy rejects `false`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnyTrue;

/// `Permission.Set`.
#[derive(Debug, Clone, Default)]
pub struct PermissionSet {
    /// The members.
    pub rules: Vec<Permission>,
}

/// `Principal.Set`.
#[derive(Debug, Clone, Default)]
pub struct PrincipalSet {
    /// The members.
    pub ids: Vec<Principal>,
}

/// `envoy.config.rbac.v3.Permission`: what the request or connection is for.
#[derive(Debug, Clone)]
pub enum Permission {
    /// All must match.
    AndRules(PermissionSet),
    /// One must match.
    OrRules(PermissionSet),
    /// Always matches.
    Any(AnyTrue),
    /// A request header (pseudo-headers included).
    Header(HeaderMatcher),
    /// The path without query.
    UrlPath(PathMatcher),
    /// The destination address.
    DestinationIp(Cidr),
    /// The destination port.
    DestinationPort(u32),
    /// The destination port in `[start, end)`.
    DestinationPortRange(PortRange),
    /// Dynamic metadata.
    Metadata(MetadataMatcher),
    /// The negation.
    NotRule(Box<Permission>),
    /// The TLS SNI (empty when none).
    RequestedServerName(StringMatcher),
    /// A `uri_template` path template (`envoy.path.match.uri_template`).
    UriTemplate(UriTemplateConfig),
}

/// `envoy.config.rbac.v3.Principal`: who is asking.
#[derive(Debug, Clone)]
pub enum Principal {
    /// All must match.
    AndIds(PrincipalSet),
    /// One must match.
    OrIds(PrincipalSet),
    /// Always matches.
    Any(AnyTrue),
    /// The peer identity (the HBONE peer's SPIFFE id).
    Authenticated(Authenticated),
    /// The downstream (source) address (deprecated in Envoy for `direct_remote_ip`).
    SourceIp(Cidr),
    /// The downstream (source) address.
    DirectRemoteIp(Cidr),
    /// The original client address (as forwarded).
    RemoteIp(Cidr),
    /// A request header.
    Header(HeaderMatcher),
    /// The path without query.
    UrlPath(PathMatcher),
    /// Dynamic metadata.
    Metadata(MetadataMatcher),
    /// A filter state object.
    FilterState(FilterStateMatcher),
    /// The negation.
    NotId(Box<Principal>),
}

/// `Principal.Authenticated`.
#[derive(Debug, Clone, Default)]
pub struct Authenticated {
    /// Matched against the peer's SPIFFE id; absent matches any authenticated peer.
    pub principal_name: Option<StringMatcher>,
}

/// `envoy.type.matcher.v3.PathMatcher`.
#[derive(Debug, Clone)]
pub struct PathMatcher {
    /// Matched against the path without query and fragment.
    pub path: StringMatcher,
}

/// `envoy.type.matcher.v3.FilterStateMatcher` (string form).
#[derive(Debug, Clone)]
pub struct FilterStateMatcher {
    /// The filter state key (`io.istio.peer_principal`).
    pub key: String,
    /// Matched against the object's string form.
    pub string_match: StringMatcher,
}

/// `envoy.config.core.v3.CidrRange`, as a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub IpNet);

impl Cidr {
    /// `address_prefix`/`prefix_len`; the address is truncated to the prefix as Envoy does.
    pub fn new(address: &str, prefix_len: u32) -> Result<Self, String> {
        let ip: std::net::IpAddr = address
            .parse()
            .map_err(|_| format!("addressPrefix: not an IP address: {address:?}"))?;
        let len = u8::try_from(prefix_len).map_err(|_| format!("prefixLen: {prefix_len}"))?;
        let net = IpNet::new(ip, len)
            .map_err(|_| format!("prefixLen: {prefix_len} is too long for {address}"))?;
        Ok(Cidr(net.trunc()))
    }
}

/// `envoy.type.v3.Int32Range` over ports: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// Inclusive.
    pub start: i64,
    /// Exclusive.
    pub end: i64,
}

/// `uri_template` as a `TypedExtensionConfig`.
#[derive(Debug, Clone)]
pub struct UriTemplateConfig {
    /// The extension name (`uri-template`).
    pub name: String,
    /// The compiled `path_template`.
    pub template: UriTemplate,
}

/// The type URL of `UriTemplateMatchConfig`.
pub const URI_TEMPLATE_TYPE: &str =
    "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig";

/// How a [`HeaderMatcher`] compares the header's value.
#[derive(Debug, Clone)]
pub enum HeaderMatch {
    /// `exact_match` (deprecated): equal; an empty value matches any present header.
    Exact(String),
    /// `safe_regex_match`.
    Regex(SafeRegex),
    /// `range_match`: the value as an integer in `[start, end)`.
    Range {
        /// Inclusive.
        start: i64,
        /// Exclusive.
        end: i64,
    },
    /// `present_match`: `true` matches a present header, `false` an absent one.
    Present(bool),
    /// `prefix_match`.
    Prefix(String),
    /// `suffix_match`.
    Suffix(String),
    /// `contains_match`.
    Contains(String),
    /// `string_match`.
    String(StringMatcher),
}

/// `envoy.config.route.v3.HeaderMatcher`. Several values of one header are joined with
/// `,` before matching.
#[derive(Debug, Clone)]
pub struct HeaderMatcher {
    /// Header name, lower case (`:authority`, `:method`, `:path` included).
    pub name: String,
    /// The comparison.
    pub kind: HeaderMatch,
    /// Invert the result (an absent header still fails value comparisons).
    pub invert: bool,
    /// Compare an absent header as the empty string.
    pub treat_missing_as_empty: bool,
}

impl HeaderMatcher {
    /// A matcher on header `name` (any case; must be non-empty).
    pub fn new(
        name: &str,
        kind: HeaderMatch,
        invert: bool,
        treat_missing_as_empty: bool,
    ) -> Result<Self, String> {
        if name.is_empty() {
            return Err("header matcher: name must not be empty".into());
        }
        Ok(HeaderMatcher {
            name: name.to_ascii_lowercase(),
            kind,
            invert,
            treat_missing_as_empty,
        })
    }
}

/// `envoy.type.matcher.v3.MetadataMatcher`.
#[derive(Debug, Clone)]
pub struct MetadataMatcher {
    /// The filter namespace (`envoy.filters.http.jwt_authn`, `istio_authn`).
    pub filter: String,
    /// Keys into the namespace's struct.
    pub path: Vec<PathSegment>,
    /// The value comparison.
    pub value: ValueMatcher,
    /// Invert the result.
    pub invert: bool,
}

/// One key of a metadata path.
#[derive(Debug, Clone)]
pub struct PathSegment {
    /// The struct key.
    pub key: String,
}

/// `envoy.type.matcher.v3.ValueMatcher`.
#[derive(Debug, Clone)]
pub enum ValueMatcher {
    /// Matches a null (or absent) value.
    NullMatch(NullMatch),
    /// A number.
    DoubleMatch(DoubleMatcher),
    /// A string.
    StringMatch(StringMatcher),
    /// A boolean equal to this.
    BoolMatch(bool),
    /// `true`: any non-null value; `false`: an absent or null one.
    PresentMatch(bool),
    /// A list with an element matching `one_of`.
    ListMatch(ListMatcher),
    /// Any of these.
    OrMatch(OrMatcher),
}

/// `ValueMatcher.NullMatch` (empty).
#[derive(Debug, Clone, Default)]
pub struct NullMatch {}

/// `envoy.type.matcher.v3.ListMatcher`.
#[derive(Debug, Clone)]
pub struct ListMatcher {
    /// An element must match this.
    pub one_of: Box<ValueMatcher>,
}

/// `envoy.type.matcher.v3.OrMatcher`.
#[derive(Debug, Clone)]
pub struct OrMatcher {
    /// One must match.
    pub value_matchers: Vec<ValueMatcher>,
}

/// `envoy.type.matcher.v3.DoubleMatcher`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DoubleMatcher {
    /// `[start, end)`.
    Range(DoubleRange),
    /// Equal.
    Exact(f64),
}

/// `envoy.type.v3.DoubleRange`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DoubleRange {
    /// Inclusive.
    pub start: f64,
    /// Exclusive.
    pub end: f64,
}
