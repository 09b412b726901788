//! External authorization (AuthorizationPolicy `CUSTOM`), Envoy's ext_authz protocol.
//!
//! - [`provider`]: the providers MeshConfig `extensionProviders` declares, compiled;
//! - [`check`]: what a check tells the authorization server about a request (the
//!   attributes of Envoy's `CheckRequest`, independent of the transport);
//! - [`outcome`]: what the server answered and how it changes the request and response;
//! - [`http`]: the HTTP flavour of the protocol (building the check request, reading
//!   the answer), pure;
//! - [`plan`]: which provider a request must be checked by, if any.
//!
//! The transports (gRPC `envoy.service.auth.v3.Authorization/Check`, plain HTTP) live in
//! the binary behind [`ExtAuthzClient`].

pub mod body;
pub mod check;
pub mod http;
pub mod outcome;
pub mod plan;
pub mod provider;

use std::future::Future;
use std::pin::Pin;

pub use check::{CheckRequest, HttpRequestAttributes, Peer};
pub use outcome::{Allowed, CheckOutcome, Denied, HeaderAction, HeaderOp};
pub use plan::{custom_plan, custom_provider, CustomPlan};
pub use provider::{
    BodySettings, HeaderPattern, HttpSettings, Provider, ProviderEntry, ProviderKind, Providers,
};

use crate::model::RequestContext;

/// Why a check produced no answer. The provider's `failOpen` / `statusOnError` decide
/// what the request gets then.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// The authorization server could not be reached (no endpoint, connect failure).
    #[error("ext_authz provider {provider} unreachable: {reason}")]
    Unreachable {
        /// The provider name.
        provider: String,
        /// What went wrong.
        reason: String,
    },
    /// No answer within the provider's `timeout`.
    #[error("ext_authz provider {provider} timed out after {timeout_ms} ms")]
    Timeout {
        /// The provider name.
        provider: String,
        /// The timeout in force.
        timeout_ms: u128,
    },
    /// The server answered something that is not an ext_authz answer (a gRPC error status,
    /// a reset, an undecodable message).
    #[error("ext_authz provider {provider} failed: {reason}")]
    Failed {
        /// The provider name.
        provider: String,
        /// What went wrong.
        reason: String,
    },
}

/// A boxed future of a check.
pub type CheckFuture<'a> =
    Pin<Box<dyn Future<Output = Result<CheckOutcome, CheckError>> + Send + 'a>>;

/// Sends checks to authorization servers. The binary implements it over its upstream
/// connection pools; tests implement it with canned answers.
pub trait ExtAuthzClient: Send + Sync {
    /// Asks `provider` about `request`, which arrived in `ctx`. Timeouts are applied by
    /// the caller.
    fn check<'a>(
        &'a self,
        provider: &'a Provider,
        ctx: &'a RequestContext,
        request: CheckRequest,
    ) -> CheckFuture<'a>;
}

/// Runs one check with the provider's timeout.
pub async fn check_with_timeout(
    client: &dyn ExtAuthzClient,
    provider: &Provider,
    ctx: &RequestContext,
    request: CheckRequest,
) -> Result<CheckOutcome, CheckError> {
    match tokio::time::timeout(provider.timeout, client.check(provider, ctx, request)).await {
        Ok(r) => r,
        Err(_) => Err(CheckError::Timeout {
            provider: provider.name.clone(),
            timeout_ms: provider.timeout.as_millis(),
        }),
    }
}
