//! TCP inside a tunnel: the bytes are copied to the chosen endpoint unchanged, each
//! direction closed separately (half-close respected).

use std::sync::Arc;

use filters::balance;
use filters::model::TunnelInfo;
use filters::route::Backend;

use crate::hbone::H2Stream;
use crate::state::Proxy;

/// Copies the tunnel to an endpoint of its target until both directions end.
pub async fn serve(proxy: Arc<Proxy>, info: Arc<TunnelInfo>, mut stream: H2Stream) {
    if let Err(policy) = authorize(&proxy, &info).await {
        tracing::info!(%policy, peer = %info.peer, "TCP tunnel denied by authorization");
        return;
    }
    let picked = match balance::pick(&Backend::of_target(&info.target)) {
        Ok(p) => p,
        Err(e) => {
            tracing::info!(error = %e, flag = e.response_flag(), "TCP tunnel closed: no endpoint");
            return;
        }
    };
    let mut upstream = match proxy.upstream.connect(&picked).await {
        Ok(u) => u,
        Err(e) => {
            tracing::info!(error = %e, flag = e.response_flag(), "TCP tunnel closed: connect failed");
            return;
        }
    };
    match tokio::io::copy_bidirectional(&mut stream, &mut upstream).await {
        Ok((sent, received)) => {
            tracing::debug!(endpoint = %picked.address, sent, received, "TCP tunnel finished")
        }
        Err(e) => tracing::debug!(endpoint = %picked.address, error = %e, "TCP tunnel failed"),
    }
}

/// Applies the AuthorizationPolicies to a TCP tunnel (HTTP-only attributes cannot apply).
/// A matching CUSTOM policy with a gRPC provider is checked with the connection's
/// attributes (Envoy's network ext_authz filter); HTTP providers do not apply to TCP.
async fn authorize(proxy: &Arc<Proxy>, info: &Arc<TunnelInfo>) -> Result<(), String> {
    use filters::authz::ext::{self, CheckOutcome, CheckRequest, CustomPlan};
    let snapshot = proxy.config.current();
    let service = match &info.target {
        filters::model::Target::Service { service, .. } => Some(service.name.to_string()),
        filters::model::Target::Workload { .. } => None,
    };
    let policies = snapshot.authz.for_target(service.as_deref());
    if policies.is_empty() {
        return Ok(());
    }
    let attrs = filters::authz::Attributes::of_tunnel(info);
    match ext::custom_plan(&policies, &snapshot.authz.providers, &attrs) {
        CustomPlan::Skip => {}
        CustomPlan::DenyAll(why) => {
            filters::authz::count(&filters::authz::Verdict::Deny(why.clone()));
            return Err(why);
        }
        CustomPlan::Check { provider, policies } => {
            let ctx = filters::model::RequestContext {
                snapshot: snapshot.clone(),
                tunnel: info.clone(),
            };
            let client = crate::ext_authz::Client::new(proxy.clone());
            let check = CheckRequest::of_tunnel(&ctx);
            match ext::check_with_timeout(&client, &provider, &ctx, check).await {
                Ok(CheckOutcome::Allow(_)) => {}
                Ok(CheckOutcome::Deny(_)) => {
                    filters::authz::count(&filters::authz::Verdict::Deny(policies.join(",")));
                    return Err(format!(
                        "ext_authz provider {} ({})",
                        provider.name,
                        policies.join(",")
                    ));
                }
                Err(e) if provider.fail_open => {
                    tracing::warn!(error = %e, "ext_authz check of a TCP tunnel failed; failOpen allows");
                }
                Err(e) => {
                    filters::authz::count(&filters::authz::Verdict::Deny(policies.join(",")));
                    return Err(e.to_string());
                }
            }
        }
    }
    let verdict = filters::authz::evaluate(&policies, &attrs, Some(&|_| true)).verdict;
    filters::authz::count(&verdict);
    match verdict {
        filters::authz::Verdict::Allow(_) => Ok(()),
        filters::authz::Verdict::Deny(p) => Err(p),
    }
}
