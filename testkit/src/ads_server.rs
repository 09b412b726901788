//! A Delta ADS server for tests: serves whatever resources the test sets, pushes changes
//! to connected clients, and records every ACK and NACK.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use futures::Stream;
use tokio::sync::{mpsc, watch};

/// A client's answer to one response.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The type URL.
    pub type_url: String,
    /// The nonce answered.
    pub nonce: String,
    /// `None` for an ACK; the `error_detail` message for a NACK.
    pub error: Option<String>,
}

/// Resources of one type: name -> (version, resource).
type Named = BTreeMap<String, (String, Any)>;

#[derive(Default)]
struct Shared {
    /// By type URL.
    resources: Mutex<HashMap<String, Named>>,
    replies: Mutex<Vec<Reply>>,
    nodes: Mutex<Vec<Node>>,
    /// Per stream: the `authorization` header, when present.
    authorizations: Mutex<Vec<Option<String>>>,
    /// Every (un)subscription: type URL, names subscribed, names unsubscribed.
    subscriptions: Mutex<Vec<Subscription>>,
}

/// One request's change of subscriptions.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    /// The type URL.
    pub type_url: String,
    /// `resource_names_subscribe`.
    pub subscribe: Vec<String>,
    /// `resource_names_unsubscribe`.
    pub unsubscribe: Vec<String>,
}

/// The server; cloning shares its state.
#[derive(Clone)]
pub struct AdsServer {
    shared: Arc<Shared>,
    changed: watch::Sender<u64>,
    kill: watch::Sender<u64>,
}

impl Default for AdsServer {
    fn default() -> Self {
        Self {
            shared: Arc::default(),
            changed: watch::channel(0).0,
            kill: watch::channel(0).0,
        }
    }
}

impl AdsServer {
    /// Replaces the resources of `type_url` (name -> resource) and pushes them.
    pub fn set(&self, type_url: &str, resources: Vec<(String, Any)>) {
        {
            let mut all = self.shared.resources.lock().unwrap();
            let version = self.changed.borrow().wrapping_add(1).to_string();
            let entry = all.entry(type_url.to_string()).or_default();
            entry.clear();
            for (name, any) in resources {
                entry.insert(name, (version.clone(), any));
            }
        }
        self.changed.send_modify(|v| *v += 1);
    }

    /// Ends every open stream with `UNAVAILABLE`, as a server going away does (stop the
    /// listener first to keep clients out until it is served again).
    pub fn disconnect_all(&self) {
        self.kill.send_modify(|v| *v += 1);
    }

    /// Every ACK and NACK received so far.
    pub fn replies(&self) -> Vec<Reply> {
        self.shared.replies.lock().unwrap().clone()
    }

    /// Every change of subscriptions received so far, in order.
    pub fn subscriptions(&self) -> Vec<Subscription> {
        self.shared.subscriptions.lock().unwrap().clone()
    }

    /// Node ids of the clients that connected.
    pub fn nodes(&self) -> Vec<String> {
        self.node_messages().into_iter().map(|n| n.id).collect()
    }

    /// The nodes clients sent, as received (one per stream: the first request's).
    pub fn node_messages(&self) -> Vec<Node> {
        self.shared.nodes.lock().unwrap().clone()
    }

    /// Per stream opened: its `authorization` header, when it had one.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.shared.authorizations.lock().unwrap().clone()
    }

    /// The tonic service, to serve beside others (the CA, over TLS).
    pub fn service(&self) -> AggregatedDiscoveryServiceServer<AdsServer> {
        AggregatedDiscoveryServiceServer::new(self.clone())
    }

    /// Serves on a Unix socket at `path` until the returned handle is aborted.
    pub fn serve_unix(&self, path: &Path) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path)?;
        let svc = AggregatedDiscoveryServiceServer::new(self.clone());
        let path: PathBuf = path.to_path_buf();
        Ok(tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(incoming)
                .await
            {
                tracing::warn!(path = %path.display(), error = %e, "test xDS server failed");
            }
        }))
    }
}

type DeltaStream =
    Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, tonic::Status>> + Send>>;
type SotwStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = SotwStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        _request: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<SotwStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("use DeltaAggregatedResources"))
    }

    async fn delta_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<DeltaStream>, tonic::Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        self.shared
            .authorizations
            .lock()
            .unwrap()
            .push(authorization);
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let shared = self.shared.clone();
        let mut changed = self.changed.subscribe();
        let mut kill = self.kill.subscribe();
        tokio::spawn(async move {
            // type URL -> subscribed names (empty = wildcard), and names last sent.
            let mut subs: BTreeMap<String, Vec<String>> = BTreeMap::new();
            let mut sent: HashMap<String, BTreeMap<String, String>> = HashMap::new();
            let mut nonce = 0u64;
            loop {
                let push: Vec<String> = tokio::select! {
                    req = incoming.message() => {
                        let Ok(Some(req)) = req else { return };
                        if record_request(&shared, &req) {
                            continue;
                        }
                        subscribe(&mut subs, &mut sent, &req);
                        vec![req.type_url.clone()]
                    }
                    c = changed.changed() => {
                        if c.is_err() { return }
                        subs.keys().cloned().collect()
                    }
                    _ = kill.changed() => {
                        let _ = tx.send(Err(tonic::Status::unavailable("server going away"))).await;
                        return;
                    }
                };
                for type_url in push {
                    let names = subs.get(&type_url).cloned().unwrap_or_default();
                    let known = sent.entry(type_url.clone()).or_default();
                    nonce += 1;
                    let resp = delta_response(&shared, &type_url, &names, known, nonce);
                    if tx.send(Ok(resp)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Records the client's node id and ACK/NACK; true when the request is only an ACK/NACK.
fn record_request(shared: &Shared, req: &DeltaDiscoveryRequest) -> bool {
    if let Some(node) = &req.node {
        shared.nodes.lock().unwrap().push(node.clone());
    }
    if !req.resource_names_subscribe.is_empty() || !req.resource_names_unsubscribe.is_empty() {
        shared.subscriptions.lock().unwrap().push(Subscription {
            type_url: req.type_url.clone(),
            subscribe: req.resource_names_subscribe.clone(),
            unsubscribe: req.resource_names_unsubscribe.clone(),
        });
    }
    if !req.response_nonce.is_empty() {
        shared.replies.lock().unwrap().push(Reply {
            type_url: req.type_url.clone(),
            nonce: req.response_nonce.clone(),
            error: req.error_detail.as_ref().map(|s| s.message.clone()),
        });
        if req.resource_names_subscribe.is_empty() && req.resource_names_unsubscribe.is_empty() {
            return true;
        }
    }
    false
}

/// Applies a request's (un)subscriptions and the versions it says the client already has.
fn subscribe(
    subs: &mut BTreeMap<String, Vec<String>>,
    sent: &mut HashMap<String, BTreeMap<String, String>>,
    req: &DeltaDiscoveryRequest,
) {
    let names = subs.entry(req.type_url.clone()).or_default();
    names.extend(req.resource_names_subscribe.iter().cloned());
    names.retain(|n| !req.resource_names_unsubscribe.contains(n));
    // Versions the client already has are not resent.
    let known = sent.entry(req.type_url.clone()).or_default();
    for (k, v) in &req.initial_resource_versions {
        known.insert(k.clone(), v.clone());
    }
}

/// The resources of `type_url` in `names` (empty = all) that differ from `known`, and the
/// names gone since; updates `known` to what the response carries.
fn delta_response(
    shared: &Shared,
    type_url: &str,
    names: &[String],
    known: &mut BTreeMap<String, String>,
    nonce: u64,
) -> DeltaDiscoveryResponse {
    let all = shared
        .resources
        .lock()
        .unwrap()
        .get(type_url)
        .cloned()
        .unwrap_or_default();
    let mut resources = Vec::new();
    for (name, (version, any)) in &all {
        if !names.is_empty() && !names.contains(name) {
            continue;
        }
        if known.get(name) == Some(version) {
            continue;
        }
        known.insert(name.clone(), version.clone());
        resources.push(Resource {
            name: name.clone(),
            version: version.clone(),
            resource: Some(any.clone()),
            ..Default::default()
        });
    }
    let removed: Vec<String> = known
        .keys()
        .filter(|n| !all.contains_key(*n))
        .cloned()
        .collect();
    for n in &removed {
        known.remove(n);
    }
    DeltaDiscoveryResponse {
        type_url: type_url.to_string(),
        resources,
        removed_resources: removed,
        nonce: nonce.to_string(),
        system_version_info: nonce.to_string(),
        ..Default::default()
    }
}
