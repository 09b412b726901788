//! Envoy's RBAC configuration as a domain model: `envoy.config.rbac.v3.RBAC` inside the
//! HTTP (`envoy.extensions.filters.http.rbac.v3.RBAC`) or network
//! (`envoy.extensions.filters.network.rbac.v3.RBAC`) filter config.
//!
//! Every type deserializes from the proto-JSON shape (camelCase field names, oneofs as one
//! present field) through a self-describing JSON value: load YAML with
//! [`super::RbacConfig::from_yaml`] (serde_yaml alone reads enums only from YAML tags). Unknown fields and matcher kinds are errors naming the field; nothing
//! is silently ignored. The same types are built from protobuf by `xds::translate::rbac`.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

use super::string_match::{SafeRegex, StringMatcher};
use super::uri_template::UriTemplate;

/// The type URL of the HTTP RBAC filter config.
pub const HTTP_RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
/// The type URL of the network RBAC filter config.
pub const NETWORK_RBAC_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";

/// Which filter a config is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum FilterKind {
    /// `envoy.filters.http.rbac`: per request.
    #[serde(rename = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC")]
    Http,
    /// `envoy.filters.network.rbac`: per connection.
    #[serde(rename = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC")]
    Network,
}

/// A named RBAC filter as listeners list it: `{name, typedConfig}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RbacFilter {
    /// Filter name (`envoy.filters.http.rbac`, `envoy.filters.network.rbac`).
    pub name: String,
    /// The filter config.
    pub typed_config: RbacConfig,
}

/// The RBAC filter config (HTTP or network).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RbacConfig {
    /// HTTP or network, from `@type`.
    #[serde(rename = "@type")]
    pub kind: FilterKind,
    /// Enforced rules; absent means the filter enforces nothing.
    #[serde(default)]
    pub rules: Option<Rbac>,
    /// Shadow rules: evaluated and reported, never enforced.
    #[serde(default)]
    pub shadow_rules: Option<Rbac>,
    /// Prefix of the shadow result's metadata keys and stats
    /// (`<prefix>shadow_effective_policy_id`, `<prefix>shadow_engine_result`).
    #[serde(default)]
    pub shadow_rules_stat_prefix: String,
    /// Prefix of the enforced rules' stats (HTTP).
    #[serde(default)]
    pub rules_stat_prefix: String,
    /// Stat prefix (network; required there by Envoy).
    #[serde(default)]
    pub stat_prefix: String,
    /// Per-policy stats (HTTP).
    #[serde(default)]
    pub track_per_rule_stats: bool,
    /// Network: `ONE_TIME_ON_FIRST_BYTE` (default) or `CONTINUOUS`; the waypoint decides
    /// once per connection either way.
    #[serde(default)]
    pub enforcement_type: Option<EnforcementType>,
}

/// Network RBAC enforcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EnforcementType {
    /// Decide on the first byte.
    OneTimeOnFirstByte,
    /// Decide on every data chunk.
    Continuous,
}

/// What a matching policy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
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
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rbac {
    /// The action of a match.
    #[serde(default)]
    pub action: Action,
    /// Policies by name; evaluated in name order (the first match is the effective policy).
    #[serde(default)]
    pub policies: BTreeMap<String, Policy>,
}

/// A policy: matches when any permission and any principal match.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    /// What is asked for (OR).
    #[serde(default)]
    pub permissions: Vec<Permission>,
    /// Who asks (OR).
    #[serde(default)]
    pub principals: Vec<Principal>,
}

/// `any: true` (Envoy rejects `false`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnyTrue;

impl<'de> Deserialize<'de> for AnyTrue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if bool::deserialize(d)? {
            Ok(AnyTrue)
        } else {
            Err(serde::de::Error::custom("any: must be true"))
        }
    }
}

/// `Permission.Set`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionSet {
    /// The members.
    #[serde(default)]
    pub rules: Vec<Permission>,
}

/// `Principal.Set`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalSet {
    /// The members.
    #[serde(default)]
    pub ids: Vec<Principal>,
}

/// `envoy.config.rbac.v3.Permission`: what the request or connection is for.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
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
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
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
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Authenticated {
    /// Matched against the peer's SPIFFE id; absent matches any authenticated peer.
    #[serde(default)]
    pub principal_name: Option<StringMatcher>,
}

/// `envoy.type.matcher.v3.PathMatcher`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathMatcher {
    /// Matched against the path without query and fragment.
    pub path: StringMatcher,
}

/// `envoy.type.matcher.v3.FilterStateMatcher` (string form).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterStateMatcher {
    /// The filter state key (`io.istio.peer_principal`).
    pub key: String,
    /// Matched against the object's string form.
    pub string_match: StringMatcher,
}

/// `envoy.config.core.v3.CidrRange`, as a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub IpNet);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawCidr {
    address_prefix: String,
    #[serde(default)]
    prefix_len: Option<u32>,
}

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

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = RawCidr::deserialize(d)?;
        Cidr::new(&r.address_prefix, r.prefix_len.unwrap_or(0)).map_err(serde::de::Error::custom)
    }
}

/// `envoy.type.v3.Int32Range` over ports: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRange {
    /// Inclusive.
    #[serde(default)]
    pub start: i64,
    /// Exclusive.
    #[serde(default)]
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

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawUriTemplateConfig {
    #[serde(default)]
    name: String,
    typed_config: RawUriTemplateMatch,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawUriTemplateMatch {
    #[serde(rename = "@type")]
    type_url: String,
    path_template: String,
}

/// The type URL of `UriTemplateMatchConfig`.
pub const URI_TEMPLATE_TYPE: &str =
    "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig";

impl<'de> Deserialize<'de> for UriTemplateConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = RawUriTemplateConfig::deserialize(d)?;
        if r.typed_config.type_url != URI_TEMPLATE_TYPE {
            return Err(serde::de::Error::custom(format!(
                "typedConfig: unsupported @type {:?} (expected {URI_TEMPLATE_TYPE})",
                r.typed_config.type_url
            )));
        }
        let template =
            UriTemplate::new(&r.typed_config.path_template).map_err(serde::de::Error::custom)?;
        Ok(UriTemplateConfig {
            name: r.name,
            template,
        })
    }
}

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

#[derive(Deserialize)]
#[serde(untagged)]
enum Int64 {
    Num(i64),
    Str(String),
}

impl Int64 {
    fn get(self) -> Result<i64, String> {
        match self {
            Int64::Num(n) => Ok(n),
            Int64::Str(s) => s.parse().map_err(|_| format!("not an int64: {s:?}")),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRange {
    #[serde(default)]
    start: Option<Int64>,
    #[serde(default)]
    end: Option<Int64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawHeaderMatcher {
    name: String,
    #[serde(default)]
    exact_match: Option<String>,
    #[serde(default)]
    safe_regex_match: Option<SafeRegex>,
    #[serde(default)]
    range_match: Option<RawRange>,
    #[serde(default)]
    present_match: Option<bool>,
    #[serde(default)]
    prefix_match: Option<String>,
    #[serde(default)]
    suffix_match: Option<String>,
    #[serde(default)]
    contains_match: Option<String>,
    #[serde(default)]
    string_match: Option<StringMatcher>,
    #[serde(default)]
    invert_match: bool,
    #[serde(default)]
    treat_missing_header_as_empty: bool,
}

impl TryFrom<RawHeaderMatcher> for HeaderMatcher {
    type Error = String;

    fn try_from(r: RawHeaderMatcher) -> Result<Self, String> {
        let mut kinds = Vec::new();
        if let Some(v) = r.exact_match {
            kinds.push(HeaderMatch::Exact(v));
        }
        if let Some(v) = r.safe_regex_match {
            kinds.push(HeaderMatch::Regex(v));
        }
        if let Some(v) = r.range_match {
            kinds.push(HeaderMatch::Range {
                start: v.start.map(Int64::get).transpose()?.unwrap_or(0),
                end: v.end.map(Int64::get).transpose()?.unwrap_or(0),
            });
        }
        if let Some(v) = r.present_match {
            kinds.push(HeaderMatch::Present(v));
        }
        if let Some(v) = r.prefix_match {
            kinds.push(HeaderMatch::Prefix(v));
        }
        if let Some(v) = r.suffix_match {
            kinds.push(HeaderMatch::Suffix(v));
        }
        if let Some(v) = r.contains_match {
            kinds.push(HeaderMatch::Contains(v));
        }
        if let Some(v) = r.string_match {
            kinds.push(HeaderMatch::String(v));
        }
        if kinds.len() > 1 {
            return Err(format!(
                "header {:?}: more than one match kind given",
                r.name
            ));
        }
        HeaderMatcher::new(
            &r.name,
            kinds.pop().unwrap_or(HeaderMatch::Present(true)),
            r.invert_match,
            r.treat_missing_header_as_empty,
        )
    }
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

impl<'de> Deserialize<'de> for HeaderMatcher {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        HeaderMatcher::try_from(RawHeaderMatcher::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// `envoy.type.matcher.v3.MetadataMatcher`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetadataMatcher {
    /// The filter namespace (`envoy.filters.http.jwt_authn`, `istio_authn`).
    pub filter: String,
    /// Keys into the namespace's struct.
    pub path: Vec<PathSegment>,
    /// The value comparison.
    pub value: ValueMatcher,
    /// Invert the result.
    #[serde(default)]
    pub invert: bool,
}

/// One key of a metadata path.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathSegment {
    /// The struct key.
    pub key: String,
}

/// `envoy.type.matcher.v3.ValueMatcher`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
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
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NullMatch {}

/// `envoy.type.matcher.v3.ListMatcher`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListMatcher {
    /// An element must match this.
    pub one_of: Box<ValueMatcher>,
}

/// `envoy.type.matcher.v3.OrMatcher`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrMatcher {
    /// One must match.
    pub value_matchers: Vec<ValueMatcher>,
}

/// `envoy.type.matcher.v3.DoubleMatcher`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DoubleMatcher {
    /// `[start, end)`.
    Range(DoubleRange),
    /// Equal.
    Exact(f64),
}

/// `envoy.type.v3.DoubleRange`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DoubleRange {
    /// Inclusive.
    #[serde(default)]
    pub start: f64,
    /// Exclusive.
    #[serde(default)]
    pub end: f64,
}
