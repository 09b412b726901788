//! The Delta ADS client: one `DeltaAggregatedResources` stream to istiod (through
//! pilot-agent's socket), subscribing to listeners and clusters (wildcard) and to the
//! endpoints of the clusters it has.
//!
//! Each response is applied to a copy of the accepted resources: every resource is
//! validated on its own; the valid ones replace their previous versions, the invalid ones
//! are NACKed by name and reason and keep their previous versions. The snapshot is built
//! from the copy outside any lock and published in one step; if it cannot be built, the
//! whole response is NACKed and nothing changes. On disconnect the client reconnects with
//! backoff, announcing the versions it has; the last good snapshot keeps serving.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status;
use filters::model::Waypoint;
use tokio::sync::mpsc;

use super::connect::{self, XdsAddress};
use super::types::{self, CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};
use crate::translate::{self, BuildOptions, InvalidResource, Resources};
use filters::{Publisher, SourceOptions};

/// First wait before reconnecting; doubles up to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait before reconnecting.
const MAX_BACKOFF: Duration = Duration::from_secs(15);
/// `google.rpc.Code.INVALID_ARGUMENT`.
const INVALID_ARGUMENT: i32 = 3;

/// Counters Envoy's admin `/stats` reports and pilot-agent's readiness reads.
#[derive(Debug, Default)]
pub struct AdsStats {
    /// Whether the stream is up.
    pub connected: AtomicBool,
    /// Streams opened.
    pub connects: AtomicU64,
    /// Accepted listener updates (`listener_manager.lds.update_success`).
    pub lds_updates: AtomicU64,
    /// Rejected listener updates (`listener_manager.lds.update_rejected`).
    pub lds_rejected: AtomicU64,
    /// Accepted cluster updates (`cluster_manager.cds.update_success`).
    pub cds_updates: AtomicU64,
    /// Rejected cluster updates (`cluster_manager.cds.update_rejected`).
    pub cds_rejected: AtomicU64,
    /// Accepted endpoint updates.
    pub eds_updates: AtomicU64,
    /// Rejected endpoint updates.
    pub eds_rejected: AtomicU64,
    /// Accepted route updates (`http.*.rds.update_success`).
    pub rds_updates: AtomicU64,
    /// Rejected route updates.
    pub rds_rejected: AtomicU64,
    /// The accepted resources as received, for the admin `/config_dump`.
    pub accepted: std::sync::Mutex<Accepted>,
}

/// Accepted resources by type URL, then name: `(version, resource, when)`.
pub type Accepted = BTreeMap<
    String,
    BTreeMap<
        String,
        (
            String,
            envoy_types::pb::google::protobuf::Any,
            std::time::SystemTime,
        ),
    >,
>;

impl AdsStats {
    fn count(&self, type_url: &str, ok: bool) {
        let c = match (type_url, ok) {
            (LISTENER, true) => &self.lds_updates,
            (LISTENER, false) => &self.lds_rejected,
            (CLUSTER, true) => &self.cds_updates,
            (CLUSTER, false) => &self.cds_rejected,
            (ENDPOINT, true) => &self.eds_updates,
            (ENDPOINT, false) => &self.eds_rejected,
            (ROUTE, true) => &self.rds_updates,
            (ROUTE, false) => &self.rds_rejected,
            _ => return,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
pub enum AdsError {
    /// Connecting failed.
    #[error("connecting to {address}: {source}")]
    Connect {
        /// The server.
        address: String,
        /// The transport error, with its causes.
        source: super::connect::ConnectError,
    },
    /// The stream failed.
    #[error("xDS stream: {0}")]
    Stream(#[from] tonic::Status),
    /// The request channel closed.
    #[error("request channel closed")]
    Closed,
}

/// The subscriber.
pub struct AdsClient {
    /// The control plane.
    pub address: XdsAddress,
    /// Who we are (from the bootstrap).
    pub node: Node,
    /// The waypoint the snapshots describe (from [`SourceOptions`]).
    waypoint: Waypoint,
    /// Counters.
    pub stats: Arc<AdsStats>,
}

/// xDS needs to know which Gateway it configures (`--gateway`).
#[derive(Debug, thiserror::Error)]
#[error("configuration over xDS needs the waypoint's Gateway (--gateway namespace/name)")]
pub struct NoGateway;

/// What survives reconnects: the accepted resources and their versions.
#[derive(Default)]
struct State {
    resources: Resources,
    versions: HashMap<&'static str, BTreeMap<String, String>>,
    seen: BTreeSet<&'static str>,
    eds_subscribed: BTreeSet<String>,
    rds_subscribed: BTreeSet<String>,
    sds_subscribed: BTreeSet<String>,
}

fn type_key(type_url: &str) -> Option<&'static str> {
    [LISTENER, CLUSTER, ENDPOINT, ROUTE, SECRET]
        .into_iter()
        .find(|t| *t == type_url)
}

/// A response applied to a copy of the accepted resources.
struct Staged<'a> {
    /// The copy, with the valid resources replaced and the removed ones gone.
    resources: Resources,
    /// The invalid resources.
    errors: Vec<InvalidResource>,
    /// The valid resources as `(name, version, resource)`.
    accepted: Vec<(&'a str, &'a str, &'a Any)>,
}

/// Applies `resp` to a copy of `resources`, validating every resource on its own.
fn stage<'a>(
    resources: &Resources,
    type_url: &'static str,
    resp: &'a DeltaDiscoveryResponse,
) -> Staged<'a> {
    let mut staged = resources.clone();
    let mut errors: Vec<InvalidResource> = Vec::new();
    let mut accepted: Vec<(&str, &str, &Any)> = Vec::new();
    for r in &resp.resources {
        let Some(any) = &r.resource else {
            errors.push(InvalidResource::new(
                types::kind(type_url),
                &r.name,
                "<resource>",
                "missing",
            ));
            continue;
        };
        match types::accept(type_url, &r.name, any, &mut staged) {
            Ok(()) => accepted.push((&r.name, &r.version, any)),
            Err(e) => errors.push(e),
        }
    }
    for name in &resp.removed_resources {
        types::remove(type_url, name, &mut staged);
    }
    Staged {
        resources: staged,
        errors,
        accepted,
    }
}

impl AdsClient {
    /// A subscriber for the waypoint `options.gateway` names, built with the same options
    /// as the local source.
    pub fn new(
        address: XdsAddress,
        node: Node,
        options: &SourceOptions,
    ) -> Result<Self, NoGateway> {
        let gateway = options.gateway.clone().ok_or(NoGateway)?;
        Ok(Self {
            address,
            node,
            waypoint: options.waypoint(gateway),
            stats: Arc::default(),
        })
    }

    /// Runs until the process ends: connects, streams, reconnects with backoff.
    pub async fn run(self, publisher: Arc<dyn Publisher>) {
        let mut state = State::default();
        let mut backoff = INITIAL_BACKOFF;
        loop {
            let delivered_before = self.stats.lds_updates.load(Ordering::Relaxed)
                + self.stats.cds_updates.load(Ordering::Relaxed);
            let result = self.session(&mut state, &*publisher).await;
            self.stats.connected.store(false, Ordering::Relaxed);
            match result {
                Ok(()) => tracing::info!(server = %self.address, "xDS stream closed by the server"),
                Err(e) => {
                    tracing::warn!(server = %self.address, error = %e, "xDS stream failed; serving the last configuration")
                }
            }
            let delivered = self.stats.lds_updates.load(Ordering::Relaxed)
                + self.stats.cds_updates.load(Ordering::Relaxed);
            if delivered > delivered_before {
                backoff = INITIAL_BACKOFF;
            }
            let jitter = Duration::from_millis(rand_ms(backoff.as_millis() as u64 / 4 + 1));
            tokio::time::sleep(backoff + jitter).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn request(&self, state: &State, type_url: &'static str, first: bool) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            node: first.then(|| self.node.clone()),
            type_url: type_url.to_string(),
            resource_names_subscribe: match type_url {
                ENDPOINT => state.eds_subscribed.iter().cloned().collect(),
                ROUTE => state.rds_subscribed.iter().cloned().collect(),
                SECRET => state.sds_subscribed.iter().cloned().collect(),
                _ => Vec::new(),
            },
            initial_resource_versions: state
                .versions
                .get(type_url)
                .map(|v| v.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
            ..Default::default()
        }
    }

    async fn session(&self, state: &mut State, publisher: &dyn Publisher) -> Result<(), AdsError> {
        let channel =
            connect::channel(&self.address)
                .await
                .map_err(|source| AdsError::Connect {
                    address: self.address.to_string(),
                    source,
                })?;
        let mut client =
            AggregatedDiscoveryServiceClient::with_interceptor(channel, self.address.credentials());
        let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(64);
        tx.send(self.request(state, CLUSTER, true))
            .await
            .map_err(|_| AdsError::Closed)?;
        tx.send(self.request(state, LISTENER, false))
            .await
            .map_err(|_| AdsError::Closed)?;
        if !state.eds_subscribed.is_empty() {
            tx.send(self.request(state, ENDPOINT, false))
                .await
                .map_err(|_| AdsError::Closed)?;
        }
        if !state.rds_subscribed.is_empty() {
            tx.send(self.request(state, ROUTE, false))
                .await
                .map_err(|_| AdsError::Closed)?;
        }
        if !state.sds_subscribed.is_empty() {
            tx.send(self.request(state, SECRET, false))
                .await
                .map_err(|_| AdsError::Closed)?;
        }
        let mut stream = client
            .delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        self.stats.connected.store(true, Ordering::Relaxed);
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        tracing::info!(server = %self.address, node = %self.node.id, "xDS stream open");
        while let Some(resp) = stream.message().await? {
            let (ack, subscriptions) = self.handle(state, &resp, publisher);
            tx.send(ack).await.map_err(|_| AdsError::Closed)?;
            for s in subscriptions {
                tx.send(s).await.map_err(|_| AdsError::Closed)?;
            }
        }
        Ok(())
    }

    /// Applies one response; returns the ACK/NACK and, when the clusters or listeners
    /// changed, the updates of the endpoint, secret or route subscriptions.
    fn handle(
        &self,
        state: &mut State,
        resp: &DeltaDiscoveryResponse,
        publisher: &dyn Publisher,
    ) -> (DeltaDiscoveryRequest, Vec<DeltaDiscoveryRequest>) {
        let Some(type_url) = type_key(&resp.type_url) else {
            let reply = nack(
                &resp.type_url,
                &resp.nonce,
                format!("type {} was not subscribed", resp.type_url),
            );
            return (reply, Vec::new());
        };
        let staged = stage(&state.resources, type_url, resp);
        let mut seen = state.seen.clone();
        seen.insert(type_url);
        let ready = seen.contains(LISTENER) && seen.contains(CLUSTER);
        if ready {
            if let Err(reason) = self.publish(&staged.resources, publisher) {
                self.stats.count(type_url, false);
                return (nack(type_url, &resp.nonce, reason), Vec::new());
            }
        }
        state.resources = staged.resources;
        state.seen = seen;
        self.record_versions(state, type_url, staged.accepted, &resp.removed_resources);
        let subscriptions = match type_url {
            CLUSTER => [self.eds_update(state), self.sds_update(state)]
                .into_iter()
                .flatten()
                .collect(),
            LISTENER => self.rds_update(state).into_iter().collect(),
            _ => Vec::new(),
        };
        let reply = self.reply(type_url, resp, &staged.errors, publisher);
        (reply, subscriptions)
    }

    /// Builds a snapshot from `staged` and publishes it; on failure rejects it and returns
    /// the NACK reason.
    fn publish(&self, staged: &Resources, publisher: &dyn Publisher) -> Result<(), String> {
        let options = BuildOptions {
            version: publisher.current_version() + 1,
            source: format!("xds:{}", self.address),
            waypoint: self.waypoint.clone(),
        };
        match translate::build(staged, &options) {
            Ok(snapshot) => {
                publisher.publish(snapshot);
                Ok(())
            }
            Err(e) => {
                let reason = format!("the update cannot be applied: {e}");
                publisher.reject(&options.source, &reason);
                Err(reason)
            }
        }
    }

    /// Records the versions of the accepted and removed resources, and the accepted ones
    /// for `/config_dump`.
    fn record_versions(
        &self,
        state: &mut State,
        type_url: &'static str,
        accepted: Vec<(&str, &str, &Any)>,
        removed: &[String],
    ) {
        let versions = state.versions.entry(type_url).or_default();
        let mut dump = self
            .stats
            .accepted
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let dump = dump.entry(type_url.to_string()).or_default();
        let now = std::time::SystemTime::now();
        for (name, version, any) in accepted {
            versions.insert(name.to_string(), version.to_string());
            // A secret's private key is not kept for the dump.
            let kept = if type_url == SECRET {
                super::dump::redacted_secret(any)
            } else {
                any.clone()
            };
            dump.insert(name.to_string(), (version.to_string(), kept, now));
        }
        for name in removed {
            versions.remove(name);
            dump.remove(name);
        }
    }

    /// The ACK, or the NACK naming every rejected resource (also reported to `publisher`).
    fn reply(
        &self,
        type_url: &'static str,
        resp: &DeltaDiscoveryResponse,
        errors: &[InvalidResource],
        publisher: &dyn Publisher,
    ) -> DeltaDiscoveryRequest {
        if errors.is_empty() {
            self.stats.count(type_url, true);
            tracing::debug!(
                type_url,
                resources = resp.resources.len(),
                removed = resp.removed_resources.len(),
                "xDS update accepted"
            );
            DeltaDiscoveryRequest {
                type_url: type_url.to_string(),
                response_nonce: resp.nonce.clone(),
                ..Default::default()
            }
        } else {
            self.stats.count(type_url, false);
            let message = errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            tracing::warn!(type_url, rejected = errors.len(), error = %message, "xDS resources rejected");
            publisher.reject(&format!("xds:{}", self.address), &message);
            nack(type_url, &resp.nonce, message)
        }
    }

    /// Subscribes to the route configurations the listeners name, unsubscribes from the
    /// others.
    fn rds_update(&self, state: &mut State) -> Option<DeltaDiscoveryRequest> {
        let wanted = state.resources.rds_names();
        let subscribe: Vec<String> = wanted.difference(&state.rds_subscribed).cloned().collect();
        let unsubscribe: Vec<String> = state.rds_subscribed.difference(&wanted).cloned().collect();
        if subscribe.is_empty() && unsubscribe.is_empty() {
            return None;
        }
        for n in &unsubscribe {
            state.resources.routes.remove(n);
        }
        state.rds_subscribed = wanted;
        Some(DeltaDiscoveryRequest {
            type_url: ROUTE.to_string(),
            resource_names_subscribe: subscribe,
            resource_names_unsubscribe: unsubscribe,
            ..Default::default()
        })
    }

    /// Subscribes to the CA secrets the clusters' TLS names (BackendTLSPolicy ConfigMaps,
    /// `configmap://…-cacert`), unsubscribes from the others.
    fn sds_update(&self, state: &mut State) -> Option<DeltaDiscoveryRequest> {
        let wanted = state.resources.secret_names();
        let subscribe: Vec<String> = wanted.difference(&state.sds_subscribed).cloned().collect();
        let unsubscribe: Vec<String> = state.sds_subscribed.difference(&wanted).cloned().collect();
        if subscribe.is_empty() && unsubscribe.is_empty() {
            return None;
        }
        for n in &unsubscribe {
            state.resources.secrets.remove(n);
        }
        state.sds_subscribed = wanted;
        Some(DeltaDiscoveryRequest {
            type_url: SECRET.to_string(),
            resource_names_subscribe: subscribe,
            resource_names_unsubscribe: unsubscribe,
            ..Default::default()
        })
    }

    /// Subscribes to the endpoints of new clusters (and of the outbound clusters of
    /// extension providers), unsubscribes from removed ones.
    fn eds_update(&self, state: &mut State) -> Option<DeltaDiscoveryRequest> {
        let wanted: BTreeSet<String> = state
            .resources
            .clusters
            .values()
            .chain(state.resources.outbound.values())
            .filter(|c| c.inline_endpoints.is_none())
            .map(|c| c.eds_name.clone())
            .collect();
        let subscribe: Vec<String> = wanted.difference(&state.eds_subscribed).cloned().collect();
        let unsubscribe: Vec<String> = state.eds_subscribed.difference(&wanted).cloned().collect();
        if subscribe.is_empty() && unsubscribe.is_empty() {
            return None;
        }
        for n in &unsubscribe {
            state.resources.endpoints.remove(n);
        }
        state.eds_subscribed = wanted;
        Some(DeltaDiscoveryRequest {
            type_url: ENDPOINT.to_string(),
            resource_names_subscribe: subscribe,
            resource_names_unsubscribe: unsubscribe,
            ..Default::default()
        })
    }
}

fn nack(type_url: &str, nonce: &str, message: String) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.to_string(),
        response_nonce: nonce.to_string(),
        error_detail: Some(Status {
            code: INVALID_ARGUMENT,
            message,
            details: Vec::new(),
        }),
        ..Default::default()
    }
}

fn rand_ms(max: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(max);
    h.finish() % max.max(1)
}
