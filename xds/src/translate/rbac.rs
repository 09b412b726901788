//! Envoy RBAC filter configs as protobuf (`envoy-types`) into [`filters::rbac`]'s model:
//! the HTTP filter (`envoy.extensions.filters.http.rbac.v3.RBAC`), the network filter
//! (`envoy.extensions.filters.network.rbac.v3.RBAC`) and the `envoy.config.rbac.v3` rules.
//!
//! Everything the model cannot evaluate (CEL conditions, matcher trees, custom matchers and
//! principals, sourced metadata, address matchers, a delayed deny) is an [`InvalidRbac`]
//! naming the policy and the field, so the resource can be NACKed; nothing is dropped.
//!
//! Test fixtures and tools write these configs in proto-JSON/YAML: [`from_proto_json`] and
//! [`from_proto_yaml`] decode them into the same protobuf messages and convert them here,
//! so there is one loader, the one production uses.

#![allow(deprecated)] // Envoy's deprecated oneof members (metadata, exact_match...) are still sent.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{CidrRange, TypedExtensionConfig};
use envoy_types::pb::envoy::config::rbac::v3 as pb;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::HeaderMatcher as PbHeaderMatcher;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as PbHttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as PbNetworkRbac;
use envoy_types::pb::envoy::extensions::path::r#match::uri_template::v3::UriTemplateMatchConfig;
use envoy_types::pb::envoy::r#type::matcher::v3 as pbm;
use envoy_types::pb::google::protobuf::Any;
use filters::rbac::model::{
    self, Action, AnyTrue, Authenticated, Cidr, DoubleMatcher, DoubleRange, EnforcementType,
    FilterKind, FilterStateMatcher, HeaderMatch, HeaderMatcher, ListMatcher, MetadataMatcher,
    NullMatch, OrMatcher, PathMatcher, PathSegment, Permission, PermissionSet, Policy, PortRange,
    Principal, PrincipalSet, Rbac, RbacConfig, UriTemplateConfig, ValueMatcher,
};
use filters::rbac::string_match::{SafeRegex, StringMatcher};
use filters::rbac::uri_template::UriTemplate;
use prost::Message;
use thiserror::Error;

/// An RBAC config the waypoint cannot enforce as given.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{}{field}: {reason}", if policy.is_empty() { String::new() } else { format!("policy {policy:?}: ") })]
pub struct InvalidRbac {
    /// The policy (`ns[foo]-policy[x]-rule[0]`); empty for a filter-level field.
    pub policy: String,
    /// The field, proto names (`permissions[0].and_rules.rules[2].metadata`; for a
    /// filter-level field `rules.action`, `shadow_matcher`...).
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

/// Where in the config a conversion is (the policy and the field path so far).
#[derive(Clone)]
struct At<'a> {
    policy: &'a str,
    field: String,
}

impl At<'_> {
    fn join(&self, f: &str) -> Self {
        let field = if self.field.is_empty() {
            f.to_string()
        } else if f.starts_with('[') {
            format!("{}{f}", self.field)
        } else {
            format!("{}.{f}", self.field)
        };
        At {
            policy: self.policy,
            field,
        }
    }

    fn err(&self, reason: impl Into<String>) -> InvalidRbac {
        InvalidRbac {
            policy: self.policy.to_string(),
            field: self.field.clone(),
            reason: reason.into(),
        }
    }
}

type R<T> = Result<T, InvalidRbac>;

fn top(field: &str) -> At<'static> {
    At {
        policy: "",
        field: field.to_string(),
    }
}

/// The HTTP RBAC filter config.
pub fn http_filter(pb: &PbHttpRbac) -> R<RbacConfig> {
    if pb.matcher.is_some() {
        return Err(top("matcher").err("matcher trees are not supported (use rules)"));
    }
    if pb.shadow_matcher.is_some() {
        return Err(top("shadow_matcher").err("matcher trees are not supported (use shadow_rules)"));
    }
    Ok(RbacConfig {
        kind: FilterKind::Http,
        rules: pb.rules.as_ref().map(|r| rbac(r, "rules")).transpose()?,
        shadow_rules: pb
            .shadow_rules
            .as_ref()
            .map(|r| rbac(r, "shadow_rules"))
            .transpose()?,
        shadow_rules_stat_prefix: pb.shadow_rules_stat_prefix.clone(),
        rules_stat_prefix: pb.rules_stat_prefix.clone(),
        stat_prefix: String::new(),
        track_per_rule_stats: pb.track_per_rule_stats,
        enforcement_type: None,
    })
}

/// The network RBAC filter config.
pub fn network_filter(pb: &PbNetworkRbac) -> R<RbacConfig> {
    if pb.matcher.is_some() {
        return Err(top("matcher").err("matcher trees are not supported (use rules)"));
    }
    if pb.shadow_matcher.is_some() {
        return Err(top("shadow_matcher").err("matcher trees are not supported (use shadow_rules)"));
    }
    if pb.delay_deny.is_some() {
        return Err(top("delay_deny").err("not supported: a denied tunnel is closed at once"));
    }
    let enforcement_type = match pb.enforcement_type {
        0 => EnforcementType::OneTimeOnFirstByte,
        1 => EnforcementType::Continuous,
        n => return Err(top("enforcement_type").err(format!("unknown value {n}"))),
    };
    Ok(RbacConfig {
        kind: FilterKind::Network,
        rules: pb.rules.as_ref().map(|r| rbac(r, "rules")).transpose()?,
        shadow_rules: pb
            .shadow_rules
            .as_ref()
            .map(|r| rbac(r, "shadow_rules"))
            .transpose()?,
        shadow_rules_stat_prefix: pb.shadow_rules_stat_prefix.clone(),
        rules_stat_prefix: String::new(),
        stat_prefix: pb.stat_prefix.clone(),
        track_per_rule_stats: false,
        enforcement_type: Some(enforcement_type),
    })
}

/// A filter's `typed_config`: the HTTP or the network RBAC config, by type URL.
pub fn from_any(any: &Any) -> R<RbacConfig> {
    match any.type_url.as_str() {
        model::HTTP_RBAC_TYPE => {
            http_filter(&PbHttpRbac::decode(any.value.as_slice()).map_err(|e| {
                top("typed_config").err(format!("not a valid HTTP RBAC config: {e}"))
            })?)
        }
        model::NETWORK_RBAC_TYPE => {
            network_filter(&PbNetworkRbac::decode(any.value.as_slice()).map_err(|e| {
                top("typed_config").err(format!("not a valid network RBAC config: {e}"))
            })?)
        }
        other => Err(top("typed_config.type_url").err(format!("not an RBAC config: {other:?}"))),
    }
}

/// A filter config in its proto-JSON form (a `typed_config` with its `@type`), as test
/// fixtures and tools write it: decoded into the protobuf message (unknown fields are
/// errors), then converted exactly as a config from xDS is.
pub fn from_proto_json(value: &serde_json::Value) -> R<RbacConfig> {
    let decode_err = |e: crate::envoy::JsonError| top("typed_config").err(e.to_string());
    match value.get("@type").and_then(serde_json::Value::as_str) {
        Some(model::HTTP_RBAC_TYPE) => http_filter(
            &crate::envoy::from_json::<PbHttpRbac>(
                "envoy.extensions.filters.http.rbac.v3.RBAC",
                value,
            )
            .map_err(decode_err)?,
        ),
        Some(model::NETWORK_RBAC_TYPE) => network_filter(
            &crate::envoy::from_json::<PbNetworkRbac>(
                "envoy.extensions.filters.network.rbac.v3.RBAC",
                value,
            )
            .map_err(decode_err)?,
        ),
        Some(other) => Err(top("typed_config.@type").err(format!("not an RBAC config: {other:?}"))),
        None => Err(top("typed_config.@type").err("missing")),
    }
}

/// [`from_proto_json`] for a YAML (or JSON) document.
pub fn from_proto_yaml(text: &str) -> R<RbacConfig> {
    let value: serde_json::Value =
        serde_yaml::from_str(text).map_err(|e| top("typed_config").err(e.to_string()))?;
    from_proto_json(&value)
}

/// `envoy.config.rbac.v3.RBAC`; `field` is where it sits (`rules`, `shadow_rules`).
pub fn rbac(pb: &pb::Rbac, field: &str) -> R<Rbac> {
    let action = match pb.action {
        0 => Action::Allow,
        1 => Action::Deny,
        2 => Action::Log,
        n => return Err(top(&format!("{field}.action")).err(format!("unknown action {n}"))),
    };
    if pb.audit_logging_options.is_some() {
        return Err(top(&format!("{field}.audit_logging_options"))
            .err("RBAC audit loggers are not supported"));
    }
    let mut policies = BTreeMap::new();
    for (name, p) in &pb.policies {
        policies.insert(name.clone(), policy(name, p)?);
    }
    Ok(Rbac { action, policies })
}

/// One named policy.
pub fn policy(name: &str, pb: &pb::Policy) -> R<Policy> {
    let at = At {
        policy: name,
        field: String::new(),
    };
    if pb.condition.is_some() || pb.checked_condition.is_some() || pb.cel_config.is_some() {
        let f = if pb.condition.is_some() {
            "condition"
        } else if pb.checked_condition.is_some() {
            "checked_condition"
        } else {
            "cel_config"
        };
        return Err(at.join(f).err("CEL conditions are not supported"));
    }
    Ok(Policy {
        permissions: pb
            .permissions
            .iter()
            .enumerate()
            .map(|(i, p)| permission(p, &at.join(&format!("permissions[{i}]"))))
            .collect::<R<_>>()?,
        principals: pb
            .principals
            .iter()
            .enumerate()
            .map(|(i, p)| principal(p, &at.join(&format!("principals[{i}]"))))
            .collect::<R<_>>()?,
    })
}

fn any_true(v: bool, at: &At<'_>) -> R<AnyTrue> {
    if v {
        Ok(AnyTrue)
    } else {
        Err(at.join("any").err("must be true"))
    }
}

fn permission(pb: &pb::Permission, at: &At<'_>) -> R<Permission> {
    use pb::permission::Rule;
    let set = |s: &pb::permission::Set, name: &str| -> R<PermissionSet> {
        let at = at.join(name);
        Ok(PermissionSet {
            rules: s
                .rules
                .iter()
                .enumerate()
                .map(|(i, p)| permission(p, &at.join(&format!("rules[{i}]"))))
                .collect::<R<_>>()?,
        })
    };
    Ok(match pb.rule.as_ref() {
        None => return Err(at.err("no rule set")),
        Some(Rule::AndRules(s)) => Permission::AndRules(set(s, "and_rules")?),
        Some(Rule::OrRules(s)) => Permission::OrRules(set(s, "or_rules")?),
        Some(Rule::Any(v)) => Permission::Any(any_true(*v, at)?),
        Some(Rule::Header(h)) => Permission::Header(header(h, &at.join("header"))?),
        Some(Rule::UrlPath(p)) => Permission::UrlPath(path(p, &at.join("url_path"))?),
        Some(Rule::DestinationIp(c)) => {
            Permission::DestinationIp(cidr(c, &at.join("destination_ip"))?)
        }
        Some(Rule::DestinationPort(p)) => Permission::DestinationPort(*p),
        Some(Rule::DestinationPortRange(r)) => Permission::DestinationPortRange(PortRange {
            start: i64::from(r.start),
            end: i64::from(r.end),
        }),
        Some(Rule::Metadata(m)) => Permission::Metadata(metadata(m, &at.join("metadata"))?),
        Some(Rule::NotRule(p)) => {
            Permission::NotRule(Box::new(permission(p, &at.join("not_rule"))?))
        }
        Some(Rule::RequestedServerName(m)) => {
            Permission::RequestedServerName(string(m, &at.join("requested_server_name"))?)
        }
        Some(Rule::UriTemplate(t)) => {
            Permission::UriTemplate(uri_template(t, &at.join("uri_template"))?)
        }
        Some(Rule::Matcher(m)) => {
            return Err(at.join("matcher").err(format!(
                "custom permission matchers are not supported ({:?})",
                m.typed_config
                    .as_ref()
                    .map(|a| a.type_url.as_str())
                    .unwrap_or(&m.name)
            )))
        }
        Some(Rule::SourcedMetadata(_)) => {
            return Err(at
                .join("sourced_metadata")
                .err("sourced metadata is not supported"))
        }
    })
}

fn principal(pb: &pb::Principal, at: &At<'_>) -> R<Principal> {
    use pb::principal::Identifier;
    let set = |s: &pb::principal::Set, name: &str| -> R<PrincipalSet> {
        let at = at.join(name);
        Ok(PrincipalSet {
            ids: s
                .ids
                .iter()
                .enumerate()
                .map(|(i, p)| principal(p, &at.join(&format!("ids[{i}]"))))
                .collect::<R<_>>()?,
        })
    };
    Ok(match pb.identifier.as_ref() {
        None => return Err(at.err("no identifier set")),
        Some(Identifier::AndIds(s)) => Principal::AndIds(set(s, "and_ids")?),
        Some(Identifier::OrIds(s)) => Principal::OrIds(set(s, "or_ids")?),
        Some(Identifier::Any(v)) => Principal::Any(any_true(*v, at)?),
        Some(Identifier::Authenticated(a)) => Principal::Authenticated(Authenticated {
            principal_name: a
                .principal_name
                .as_ref()
                .map(|m| string(m, &at.join("authenticated.principal_name")))
                .transpose()?,
        }),
        Some(Identifier::SourceIp(c)) => Principal::SourceIp(cidr(c, &at.join("source_ip"))?),
        Some(Identifier::DirectRemoteIp(c)) => {
            Principal::DirectRemoteIp(cidr(c, &at.join("direct_remote_ip"))?)
        }
        Some(Identifier::RemoteIp(c)) => Principal::RemoteIp(cidr(c, &at.join("remote_ip"))?),
        Some(Identifier::Header(h)) => Principal::Header(header(h, &at.join("header"))?),
        Some(Identifier::UrlPath(p)) => Principal::UrlPath(path(p, &at.join("url_path"))?),
        Some(Identifier::Metadata(m)) => Principal::Metadata(metadata(m, &at.join("metadata"))?),
        Some(Identifier::FilterState(f)) => {
            let at = at.join("filter_state");
            Principal::FilterState(FilterStateMatcher {
                key: f.key.clone(),
                string_match: match &f.matcher {
                    Some(pbm::filter_state_matcher::Matcher::StringMatch(m)) => {
                        string(m, &at.join("string_match"))?
                    }
                    Some(pbm::filter_state_matcher::Matcher::AddressMatch(_)) => {
                        return Err(at
                            .join("address_match")
                            .err("address matchers are not supported"))
                    }
                    None => return Err(at.err("no matcher set")),
                },
            })
        }
        Some(Identifier::NotId(p)) => Principal::NotId(Box::new(principal(p, &at.join("not_id"))?)),
        Some(Identifier::SourcedMetadata(_)) => {
            return Err(at
                .join("sourced_metadata")
                .err("sourced metadata is not supported"))
        }
        Some(Identifier::Custom(c)) => {
            return Err(at.join("custom").err(format!(
                "custom principals are not supported ({:?})",
                c.typed_config
                    .as_ref()
                    .map(|a| a.type_url.as_str())
                    .unwrap_or(&c.name)
            )))
        }
    })
}

fn regex(pb: &pbm::RegexMatcher, at: &At<'_>) -> R<SafeRegex> {
    SafeRegex::new(&pb.regex).map_err(|e| at.join("regex").err(e))
}

fn string(pb: &pbm::StringMatcher, at: &At<'_>) -> R<StringMatcher> {
    super::matcher::string_matcher(pb).map_err(|(sub, why)| match sub.strip_prefix('.') {
        Some(field) => at.join(field).err(why),
        None => at.err(why),
    })
}

fn path(pb: &pbm::PathMatcher, at: &At<'_>) -> R<PathMatcher> {
    match pb.rule.as_ref() {
        Some(pbm::path_matcher::Rule::Path(m)) => Ok(PathMatcher {
            path: string(m, &at.join("path"))?,
        }),
        None => Err(at.err("no path matcher set")),
    }
}

fn cidr(pb: &CidrRange, at: &At<'_>) -> R<Cidr> {
    Cidr::new(
        &pb.address_prefix,
        pb.prefix_len.as_ref().map(|v| v.value).unwrap_or(0),
    )
    .map_err(|e| at.err(e))
}

fn header(pb: &PbHeaderMatcher, at: &At<'_>) -> R<HeaderMatcher> {
    let kind = match pb.header_match_specifier.as_ref() {
        None => HeaderMatch::Present(true),
        Some(HeaderMatchSpecifier::ExactMatch(v)) => HeaderMatch::Exact(v.clone()),
        Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => {
            HeaderMatch::Regex(regex(r, &at.join("safe_regex_match"))?)
        }
        Some(HeaderMatchSpecifier::RangeMatch(r)) => HeaderMatch::Range {
            start: r.start,
            end: r.end,
        },
        Some(HeaderMatchSpecifier::PresentMatch(p)) => HeaderMatch::Present(*p),
        Some(HeaderMatchSpecifier::PrefixMatch(v)) => HeaderMatch::Prefix(v.clone()),
        Some(HeaderMatchSpecifier::SuffixMatch(v)) => HeaderMatch::Suffix(v.clone()),
        Some(HeaderMatchSpecifier::ContainsMatch(v)) => HeaderMatch::Contains(v.clone()),
        Some(HeaderMatchSpecifier::StringMatch(m)) => {
            HeaderMatch::String(string(m, &at.join("string_match"))?)
        }
    };
    HeaderMatcher::new(
        &pb.name,
        kind,
        pb.invert_match,
        pb.treat_missing_header_as_empty,
    )
    .map_err(|e| at.join("name").err(e))
}

/// A `MetadataMatcher` outside a policy (ext_authz's `filter_enabled_metadata`); `field`
/// is where it sits.
pub fn metadata_matcher(pb: &pbm::MetadataMatcher, field: &str) -> R<MetadataMatcher> {
    metadata(pb, &top(field))
}

fn metadata(pb: &pbm::MetadataMatcher, at: &At<'_>) -> R<MetadataMatcher> {
    let path = pb
        .path
        .iter()
        .enumerate()
        .map(|(i, s)| match &s.segment {
            Some(pbm::metadata_matcher::path_segment::Segment::Key(k)) => {
                Ok(PathSegment { key: k.clone() })
            }
            None => Err(at.join(&format!("path[{i}]")).err("no key set")),
        })
        .collect::<R<_>>()?;
    let value = match &pb.value {
        Some(v) => value(v, &at.join("value"))?,
        None => return Err(at.join("value").err("required")),
    };
    Ok(MetadataMatcher {
        filter: pb.filter.clone(),
        path,
        value,
        invert: pb.invert,
    })
}

fn value(pb: &pbm::ValueMatcher, at: &At<'_>) -> R<ValueMatcher> {
    use pbm::value_matcher::MatchPattern;
    Ok(match pb.match_pattern.as_ref() {
        None => return Err(at.err("no match pattern set")),
        Some(MatchPattern::NullMatch(_)) => ValueMatcher::NullMatch(NullMatch {}),
        Some(MatchPattern::DoubleMatch(d)) => ValueMatcher::DoubleMatch(match &d.match_pattern {
            Some(pbm::double_matcher::MatchPattern::Exact(x)) => DoubleMatcher::Exact(*x),
            Some(pbm::double_matcher::MatchPattern::Range(r)) => {
                DoubleMatcher::Range(DoubleRange {
                    start: r.start,
                    end: r.end,
                })
            }
            None => return Err(at.join("double_match").err("no match pattern set")),
        }),
        Some(MatchPattern::StringMatch(s)) => {
            ValueMatcher::StringMatch(string(s, &at.join("string_match"))?)
        }
        Some(MatchPattern::BoolMatch(b)) => ValueMatcher::BoolMatch(*b),
        Some(MatchPattern::PresentMatch(p)) => ValueMatcher::PresentMatch(*p),
        Some(MatchPattern::ListMatch(l)) => {
            let at = at.join("list_match");
            match &l.match_pattern {
                Some(pbm::list_matcher::MatchPattern::OneOf(v)) => {
                    ValueMatcher::ListMatch(ListMatcher {
                        one_of: Box::new(value(v, &at.join("one_of"))?),
                    })
                }
                None => return Err(at.err("no match pattern set")),
            }
        }
        Some(MatchPattern::OrMatch(o)) => {
            let at = at.join("or_match");
            ValueMatcher::OrMatch(OrMatcher {
                value_matchers: o
                    .value_matchers
                    .iter()
                    .enumerate()
                    .map(|(i, v)| value(v, &at.join(&format!("value_matchers[{i}]"))))
                    .collect::<R<_>>()?,
            })
        }
    })
}

fn uri_template(pb: &TypedExtensionConfig, at: &At<'_>) -> R<UriTemplateConfig> {
    let Some(any) = &pb.typed_config else {
        return Err(at.join("typed_config").err("required"));
    };
    if any.type_url != model::URI_TEMPLATE_TYPE {
        return Err(at.join("typed_config").err(format!(
            "unsupported type {:?} (expected {})",
            any.type_url,
            model::URI_TEMPLATE_TYPE
        )));
    }
    let config = UriTemplateMatchConfig::decode(any.value.as_slice()).map_err(|e| {
        at.join("typed_config")
            .err(format!("invalid UriTemplateMatchConfig: {e}"))
    })?;
    let template = UriTemplate::new(&config.path_template)
        .map_err(|e| at.join("typed_config.path_template").err(e))?;
    Ok(UriTemplateConfig {
        name: pb.name.clone(),
        template,
    })
}

#[cfg(test)]
mod tests;
