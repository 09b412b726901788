//! The external authorization client: sends the checks of CUSTOM AuthorizationPolicies to
//! their providers with Envoy's ext_authz protocol, over the upstream connection pools.
//!
//! - where a provider's `service` is reached is [`crate::upstream::dial`] (a Service's
//!   endpoints through the pools, over HBONE or plain TCP as each pod needs; an IP literal
//!   or another DNS name directly, in plaintext);
//! - [`grpc`]: `envoy.service.auth.v3.Authorization/Check` (tonic, `envoy-types`);
//! - [`http`]: the HTTP flavour.
//!
//! The decision logic (what is sent, how answers apply) is in
//! `filters::authz::ext`; this module only moves bytes.

pub mod grpc;
pub mod http;

use std::sync::Arc;

use filters::authz::ext::{
    CheckError, CheckFuture, CheckRequest, ExtAuthzClient, Provider, ProviderKind,
};
use filters::model::{RequestContext, Snapshot};
use filters::ProxyError;

use crate::state::Proxy;
use crate::upstream::dial::{self, Destination, Endpoint};

/// The client the filter chain's authorization layer uses.
pub struct Client {
    proxy: Arc<Proxy>,
}

impl Client {
    /// A client over the proxy's upstream pools.
    pub fn new(proxy: Arc<Proxy>) -> Self {
        Self { proxy }
    }
}

impl ExtAuthzClient for Client {
    fn check<'a>(
        &'a self,
        provider: &'a Provider,
        ctx: &'a RequestContext,
        request: CheckRequest,
    ) -> CheckFuture<'a> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let result = match &provider.kind {
                ProviderKind::Grpc => grpc::check(&self.proxy, provider, ctx, request).await,
                ProviderKind::Http(settings) => {
                    http::check(&self.proxy, provider, settings, ctx, request).await
                }
            };
            tracing::debug!(provider = %provider.name, kind = provider.kind_name(), elapsed_ms = started.elapsed().as_millis() as u64, ok = result.is_ok(), "ext_authz check");
            result
        })
    }
}

/// Maps a pool error to a check error.
pub(crate) fn pool_error(provider: &Provider, e: ProxyError) -> CheckError {
    match e {
        ProxyError::UpstreamConnect { .. }
        | ProxyError::UpstreamConnectTimeout { .. }
        | ProxyError::NoHealthyUpstream(_) => CheckError::Unreachable {
            provider: provider.name.clone(),
            reason: e.to_string(),
        },
        other => CheckError::Failed {
            provider: provider.name.clone(),
            reason: other.to_string(),
        },
    }
}

/// Where `provider`'s server is reached in `snapshot`.
pub(crate) async fn resolve(
    snapshot: &Snapshot,
    provider: &Provider,
) -> Result<Endpoint, CheckError> {
    let to = Destination {
        host: &provider.service,
        port: provider.port,
        cluster: provider.cluster.as_deref(),
    };
    dial::resolve(snapshot, to)
        .await
        .map_err(|e| CheckError::Unreachable {
            provider: provider.name.clone(),
            reason: e.to_string(),
        })
}
