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
    if let Err(policy) = authorize(&proxy, &info) {
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
fn authorize(proxy: &Proxy, info: &TunnelInfo) -> Result<(), String> {
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
    let verdict = filters::authz::evaluate(&policies, &attrs, None).verdict;
    filters::authz::count(&verdict);
    match verdict {
        filters::authz::Verdict::Allow(_) => Ok(()),
        filters::authz::Verdict::Deny(p) => Err(p),
    }
}
