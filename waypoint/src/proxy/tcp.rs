//! TCP inside a tunnel: the bytes are copied to the chosen endpoint unchanged, each
//! direction closed separately (half-close respected). Istio's TCP metrics are recorded
//! when the tunnel ends.

use std::sync::Arc;

use filters::balance;
use filters::model::{Target, TunnelInfo, Workload};
use filters::route::Backend;

use crate::state::Proxy;
use crate::telemetry::labels::{PeerLabels, SourceLabels};
use crate::telemetry::metrics::TcpKey;
use hbone::H2Stream;

/// Copies the tunnel to an endpoint of its target until both directions end.
pub async fn serve(proxy: Arc<Proxy>, info: Arc<TunnelInfo>, stream: H2Stream) {
    let snapshot = proxy.config.current();
    let metrics = &proxy.telemetry.metrics;
    let source = SourceLabels::new(PeerLabels::source(&info, &snapshot, &metrics.cluster));
    let service = match &info.target {
        Target::Service { service, .. } => Some(service.clone()),
        Target::Workload { .. } => None,
    };
    let key = |workload: Option<&Arc<Workload>>, flags| TcpKey {
        source: source.clone(),
        destination: metrics
            .destinations
            .get(service.as_ref(), workload, &metrics.cluster),
        flags,
    };
    // Opened is counted when the connection is set up (or fails to be), closed at the end.
    let was_opened = std::sync::atomic::AtomicBool::new(false);
    let (flags, workload, sent, received) = copy(&proxy, &info, stream, |w| {
        metrics.tcp_opened(&key(w, "-"));
        was_opened.store(true, std::sync::atomic::Ordering::Relaxed);
    })
    .await;
    if !was_opened.load(std::sync::atomic::Ordering::Relaxed) {
        metrics.tcp_opened(&key(workload.as_ref(), flags));
    }
    metrics.tcp_closed(&key(workload.as_ref(), flags), sent, received);
}

/// Runs the tunnel; returns the response flags, the endpoint's workload and the bytes
/// sent to and received from the client. `opened` runs once the upstream is connected.
async fn copy(
    proxy: &Arc<Proxy>,
    info: &Arc<TunnelInfo>,
    mut stream: H2Stream,
    opened: impl FnOnce(Option<&Arc<Workload>>),
) -> (&'static str, Option<Arc<Workload>>, u64, u64) {
    if let Err(policy) = authorize(proxy, info).await {
        tracing::info!(%policy, peer = %info.peer, "TCP tunnel denied by authorization");
        return ("-", None, 0, 0);
    }
    let picked = match balance::pick(&Backend::of_target(&info.target)) {
        Ok(p) => p,
        Err(e) => {
            tracing::info!(error = %e, flag = e.response_flag(), "TCP tunnel closed: no endpoint");
            return (e.response_flag(), None, 0, 0);
        }
    };
    let mut upstream = match proxy.upstream.connect(&picked).await {
        Ok(u) => u,
        Err(e) => {
            tracing::info!(error = %e, flag = e.response_flag(), "TCP tunnel closed: connect failed");
            return (e.response_flag(), Some(picked.workload), 0, 0);
        }
    };
    opened(Some(&picked.workload));
    match tokio::io::copy_bidirectional(&mut stream, &mut upstream).await {
        Ok((received, sent)) => {
            tracing::debug!(endpoint = %picked.address, sent, received, "TCP tunnel finished");
            ("-", Some(picked.workload), sent, received)
        }
        Err(e) => {
            tracing::debug!(endpoint = %picked.address, error = %e, "TCP tunnel failed");
            ("-", Some(picked.workload), 0, 0)
        }
    }
}

/// Applies the AuthorizationPolicies to a TCP tunnel (HTTP-only attributes cannot apply).
/// A matching CUSTOM policy with a gRPC provider is checked with the connection's
/// attributes (Envoy's network ext_authz filter); HTTP providers do not apply to TCP.
async fn authorize(proxy: &Arc<Proxy>, info: &Arc<TunnelInfo>) -> Result<(), String> {
    use filters::authz::ext::{self, CheckOutcome, CheckRequest, CustomPlan};
    let snapshot = proxy.config.current();
    if let Some(chain) = snapshot.authz.rbac_for(&info.target) {
        let attrs = filters::authz::Attributes::of_tunnel(info);
        return filters::authz::PolicySet::enforce_rbac(chain, &attrs);
    }
    let policies = snapshot.authz.for_service(info.target.service_name());
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
