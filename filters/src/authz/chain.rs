//! The xDS engine: per Service port, the authorization filters istiod puts in the
//! connection manager (or the network filter chain), in its order: Envoy RBAC filters, and
//! the ext_authz filters it pairs with CUSTOM policies (an RBAC filter whose shadow rules are
//! the CUSTOM rules, then `ext_authz` gated on that filter's result by
//! `filter_enabled_metadata`).
//!
//! [`enforce`] runs them as Envoy does: every RBAC filter writes its shadow result into the
//! chain's dynamic metadata (merged into its namespace, so a later filter overwrites only
//! the keys it sets); an ext_authz filter asks its provider only when its
//! `filter_enabled_metadata` matches the metadata at that point; the first refusal (an
//! enforcing RBAC filter, or the provider) ends the chain. Headers an allowing provider
//! sets are seen by the filters after it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::count;
use super::decide::{custom_check, Denied, Subject};
use super::engine::Verdict;
use super::ext::Provider;
use crate::explain::{Stage, Step, Trace};
use crate::rbac::eval::value_matches;
use crate::rbac::model::{FilterKind, MetadataMatcher, RbacConfig};
use crate::rbac::RbacInput;

/// The dynamic metadata namespace Envoy's HTTP RBAC filter writes.
pub const HTTP_RBAC_NAMESPACE: &str = "envoy.filters.http.rbac";
/// The dynamic metadata namespace Envoy's network RBAC filter writes.
pub const NETWORK_RBAC_NAMESPACE: &str = "envoy.filters.network.rbac";

/// One authorization filter of a chain.
#[derive(Debug, Clone)]
pub enum AuthzFilter {
    /// `envoy.filters.http.rbac` / `envoy.filters.network.rbac`.
    Rbac(RbacConfig),
    /// `envoy.filters.http.ext_authz` / `envoy.filters.network.ext_authz`.
    ExtAuthz(ExtAuthzFilter),
}

/// Envoy's ext_authz filter: the provider it asks (the same [`Provider`] the local
/// configuration compiles from MeshConfig, asked through the same client) and when.
#[derive(Debug, Clone)]
pub struct ExtAuthzFilter {
    /// The authorization server and the check's settings.
    pub provider: Arc<Provider>,
    /// `filter_enabled_metadata`: the filter runs only when the dynamic metadata matches
    /// (istiod: the CUSTOM RBAC filter's `istio_ext_authz_shadow_effective_policy_id`
    /// starts with `istio-ext-authz-<provider>`); `None` runs it for every request.
    pub enabled_metadata: Option<MetadataMatcher>,
}

/// The dynamic metadata RBAC filters wrote so far: namespace -> struct.
#[derive(Debug, Default)]
struct Metadata(BTreeMap<&'static str, Map<String, Value>>);

impl Metadata {
    /// Merges an RBAC filter's shadow result into its namespace.
    fn record(&mut self, kind: FilterKind, entries: Vec<(String, String)>) {
        if entries.is_empty() {
            return;
        }
        let namespace = match kind {
            FilterKind::Http => HTTP_RBAC_NAMESPACE,
            FilterKind::Network => NETWORK_RBAC_NAMESPACE,
        };
        let fields = self.0.entry(namespace).or_default();
        for (k, v) in entries {
            fields.insert(k, Value::String(v));
        }
    }

    /// The value `m` points at (`None`: absent).
    fn lookup(&self, m: &MetadataMatcher) -> Option<&Value> {
        let fields = self.0.get(m.filter.as_str())?;
        let (first, rest) = m.path.split_first()?;
        rest.iter()
            .try_fold(fields.get(&first.key)?, |v, k| v.get(&k.key))
            .filter(|v| !v.is_null())
    }

    /// Envoy's `MetadataMatcher` over this metadata.
    fn matches(&self, m: &MetadataMatcher) -> bool {
        value_matches(&m.value, self.lookup(m)) != m.invert
    }
}

impl ExtAuthzFilter {
    /// Whether the filter runs, given the metadata so far; with the matched value (the
    /// CUSTOM shadow policy, for logs) when it is a string.
    fn enabled(&self, metadata: &Metadata) -> Option<Vec<String>> {
        let Some(m) = &self.enabled_metadata else {
            return Some(Vec::new());
        };
        if !metadata.matches(m) {
            return None;
        }
        Some(
            metadata
                .lookup(m)
                .and_then(Value::as_str)
                .map(|p| vec![p.to_string()])
                .unwrap_or_default(),
        )
    }
}

/// Runs `chain` for `subject`: `Err` with the policy (an RBAC filter denied) or the
/// provider's answer (ext_authz refused, or failed closed).
pub async fn enforce<S: Subject>(
    chain: &[AuthzFilter],
    subject: &mut S,
    trace: Trace<'_>,
) -> Result<(), Denied<S::Reply>> {
    let mut metadata = Metadata::default();
    let mut last_matched: Option<String> = None;
    for filter in chain {
        match filter {
            AuthzFilter::Rbac(config) => {
                let result = {
                    let attrs = subject.attributes();
                    config.evaluate_traced(&RbacInput::new(&attrs), trace)
                };
                metadata.record(config.kind, result.shadow_metadata());
                let Some(enforced) = result.enforced else {
                    continue;
                };
                if let Some(p) = &enforced.policy {
                    tracing::debug!(policy = %p, "RBAC policy matched");
                    last_matched = Some(p.clone());
                }
                if !enforced.allowed {
                    let policy = enforced
                        .policy
                        .unwrap_or_else(|| "no ALLOW policy matched".into());
                    if !trace.on() {
                        count(&Verdict::Deny(policy.clone()));
                    }
                    trace.step(|| {
                        Step::new(Stage::Authorization, "decision", "denied").detail(policy.clone())
                    });
                    return Err(Denied::Policy(policy));
                }
            }
            AuthzFilter::ExtAuthz(ext) => {
                let subject_name = || format!("ext_authz provider {}", ext.provider.name);
                let Some(mut policies) = ext.enabled(&metadata) else {
                    tracing::trace!(provider = %ext.provider.name, "ext_authz not enabled for this request");
                    trace.step(|| {
                        Step::new(Stage::Authorization, subject_name(), "not asked")
                            .detail("no CUSTOM policy matched (filter_enabled_metadata)")
                    });
                    continue;
                };
                if policies.is_empty() {
                    policies.push(ext.provider.name.clone());
                }
                trace.step(|| {
                    Step::new(Stage::Authorization, subject_name(), "asked").detail(format!(
                        "{}: {}:{} decides",
                        policies.join(", "),
                        ext.provider.service,
                        ext.provider.port
                    ))
                });
                custom_check(subject, &ext.provider, &policies, trace).await?;
            }
        }
    }
    trace.step(|| {
        Step::new(Stage::Authorization, "decision", "allowed").detail(match &last_matched {
            Some(p) => format!("RBAC policy {p} matched, and no filter denied"),
            None => "no filter denied".into(),
        })
    });
    if !trace.on() {
        count(&Verdict::Allow(last_matched));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
