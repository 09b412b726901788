//! The one authorization decision. An HTTP request ([`super::AuthzLayer`]) and a TCP
//! tunnel (the proxy's TCP handler) both go through [`authorize`]: the snapshot's
//! [`Engine`] (Envoy RBAC and ext_authz filter chains from xDS, [`super::chain`], or Istio
//! AuthorizationPolicies), then for policies the CUSTOM plan and its external check, then
//! DENY and ALLOW, with the decision counters. Both engines ask an ext_authz provider
//! through the same [`custom_check`]. What differs between the two is a [`Subject`]: the attributes it offers and
//! how it asks an ext_authz provider.

use std::future::Future;

use super::engine::{evaluate_traced, Verdict};
use super::ext::{custom_plan, CheckError, CustomPlan, Provider};
use super::{count, Attributes, Engine, PolicySet};
use crate::explain::{Stage, Step, Trace};
use crate::model::Target;

/// Why traffic was refused.
#[derive(Debug)]
pub enum Denied<R> {
    /// A DENY policy matched, no ALLOW policy did, or an RBAC filter denied: the policy
    /// (or reason) for logs; the client gets 403 `RBAC: access denied`.
    Policy(String),
    /// The CUSTOM provider denied or failed: its answer, as the subject builds it.
    Custom(R),
}

/// What a CUSTOM provider answered.
#[derive(Debug)]
pub enum CustomOutcome<R> {
    /// Go on with DENY and ALLOW (the subject applied what the server asked for).
    Allowed,
    /// Refused: the answer to give.
    Denied(R),
}

/// What is being authorized: an HTTP request or a TCP tunnel.
pub trait Subject: Send {
    /// How a CUSTOM refusal is delivered (an HTTP response, or a reason for a tunnel).
    type Reply: Send;
    /// The attributes policies match, as the subject is now (after a CUSTOM check, with
    /// the headers the server set).
    fn attributes(&self) -> Attributes<'_>;
    /// Asks `provider` (for the matching CUSTOM `policies`) and applies an allowing answer.
    fn check_custom(
        &mut self,
        provider: &Provider,
        policies: &[String],
    ) -> impl Future<Output = Result<CustomOutcome<Self::Reply>, CheckError>> + Send;
    /// The answer when the check failed and the provider does not fail open.
    fn check_failed(&self, provider: &Provider, error: CheckError) -> Self::Reply;
}

/// Authorizes `subject`, addressed to `target`, under `set`.
pub async fn authorize<S: Subject>(
    set: &PolicySet,
    target: &Target,
    subject: &mut S,
) -> Result<(), Denied<S::Reply>> {
    authorize_traced(set, target, subject, Trace::OFF).await
}

/// [`authorize`], recording every policy (or RBAC filter) considered into `trace`. An
/// explained decision is not counted.
pub async fn authorize_traced<S: Subject>(
    set: &PolicySet,
    target: &Target,
    subject: &mut S,
    trace: Trace<'_>,
) -> Result<(), Denied<S::Reply>> {
    let bound = match &set.engine {
        Engine::Rbac(chains) => {
            return match chains.for_target(target) {
                Some(chain) => super::chain::enforce(chain, subject, trace).await,
                None => {
                    trace.step(|| {
                        Step::new(Stage::Authorization, target.describe(), "allowed")
                            .detail("no RBAC or ext_authz filter applies to this port")
                    });
                    Ok(())
                }
            };
        }
        Engine::Policies(p) => p,
    };
    let policies = bound.for_service(target.service_name());
    if policies.is_empty() {
        trace.step(|| {
            Step::new(Stage::Authorization, target.describe(), "allowed")
                .detail("no AuthorizationPolicy applies to the waypoint or this Service")
        });
        return Ok(());
    }
    let plan = custom_plan(&policies, &bound.providers, &subject.attributes());
    match plan {
        CustomPlan::Skip => {}
        CustomPlan::DenyAll(why) => {
            if !trace.on() {
                count(&Verdict::Deny(why.clone()));
            }
            trace.step(|| {
                Step::new(Stage::Authorization, "CUSTOM policies", "deny all").detail(why.clone())
            });
            if !trace.on() {
                tracing::info!(reason = %why, "CUSTOM authorization unusable: denying");
            }
            return Err(Denied::Policy(why));
        }
        CustomPlan::Check { provider, policies } => {
            trace.step(|| {
                Step::new(
                    Stage::Authorization,
                    format!("ext_authz provider {}", provider.name),
                    "asked",
                )
                .detail(format!(
                    "CUSTOM {} matched: {}:{} decides",
                    policies.join(", "),
                    provider.service,
                    provider.port
                ))
            });
            custom_check(subject, &provider, &policies, trace).await?;
        }
    }
    // DENY and ALLOW see the subject as the authorization server left it; CUSTOM policies
    // were settled above.
    let decision = evaluate_traced(&policies, &subject.attributes(), Some(&|_| true), trace);
    if !trace.on() {
        count(&decision.verdict);
    }
    // An explanation reports these as steps; the log is for real traffic.
    if !trace.on() {
        for p in &decision.audited {
            tracing::info!(policy = %p, "AUDIT policy matched");
        }
        if let Some(shadow) = &decision.dry_run {
            tracing::info!(dry_run = ?shadow, enforced = ?decision.verdict, "dry-run authorization result");
        }
    }
    match decision.verdict {
        Verdict::Allow(policy) => {
            tracing::debug!(policy = ?policy, "authorization allowed");
            trace.step(|| {
                Step::new(Stage::Authorization, "decision", "allowed").detail(match &policy {
                    Some(p) => format!("ALLOW policy {p} matched, no DENY policy did"),
                    None => "no DENY policy matched, and there is no ALLOW policy".into(),
                })
            });
            Ok(())
        }
        Verdict::Deny(policy) => {
            trace.step(|| {
                Step::new(Stage::Authorization, "decision", "denied").detail(policy.clone())
            });
            Err(Denied::Policy(policy))
        }
    }
}

/// Asks `provider` about `subject` for the matching CUSTOM `policies` (or the CUSTOM
/// shadow policy that enabled an xDS ext_authz filter): `Ok` when it allows, or fails and
/// fails open; otherwise the refusal (the server's answer, or `statusOnError`).
pub(super) async fn custom_check<S: Subject>(
    subject: &mut S,
    provider: &Provider,
    policies: &[String],
    trace: Trace<'_>,
) -> Result<(), Denied<S::Reply>> {
    // Rare, and its future is large: boxed, it is not part of every request's.
    let checked = Box::pin(subject.check_custom(provider, policies)).await;
    match checked {
        Ok(CustomOutcome::Allowed) => {
            tracing::debug!(provider = %provider.name, ?policies, "ext_authz allowed");
            Ok(())
        }
        Ok(CustomOutcome::Denied(reply)) => {
            if !trace.on() {
                count(&Verdict::Deny(policies.join(",")));
            }
            tracing::info!(provider = %provider.name, ?policies, "ext_authz denied");
            Err(Denied::Custom(reply))
        }
        Err(e) if provider.fail_open => {
            tracing::warn!(provider = %provider.name, error = %e, "ext_authz check failed; failOpen allows");
            Ok(())
        }
        Err(e) => {
            if !trace.on() {
                count(&Verdict::Deny(policies.join(",")));
            }
            tracing::warn!(provider = %provider.name, error = %e, status = provider.status_on_error.as_u16(), "ext_authz check failed; denying");
            Err(Denied::Custom(subject.check_failed(provider, e)))
        }
    }
}
