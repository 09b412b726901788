//! An SDS server for tests: serves the `default` and `ROOTCA` secrets it is given and
//! pushes replacements (certificate rotation).

use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, DataSource, Node};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, CertificateValidationContext, Secret, TlsCertificate,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use envoy_types::pb::google::protobuf::Any;
use futures::Stream;
use prost::Message;
use tokio::sync::{mpsc, watch};

use xds::ads::types::SECRET;

/// The server; cloning shares its state.
#[derive(Clone)]
pub struct SdsServer {
    material: watch::Sender<(Vec<u8>, Vec<u8>, Vec<u8>)>,
    nacks: Arc<Mutex<Vec<String>>>,
    nodes: Arc<Mutex<Vec<Node>>>,
}

fn inline(b: &[u8]) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineBytes(b.to_vec())),
        ..Default::default()
    })
}

impl SdsServer {
    /// A server for this PEM chain, key and roots.
    pub fn new(chain: &[u8], key: &[u8], roots: &[u8]) -> Self {
        Self {
            material: watch::channel((chain.to_vec(), key.to_vec(), roots.to_vec())).0,
            nacks: Arc::default(),
            nodes: Arc::default(),
        }
    }

    /// The nodes clients sent, as received.
    pub fn nodes(&self) -> Vec<Node> {
        self.nodes.lock().unwrap().clone()
    }

    /// Pushes new key material to every client.
    pub fn rotate(&self, chain: &[u8], key: &[u8], roots: &[u8]) {
        self.material
            .send_replace((chain.to_vec(), key.to_vec(), roots.to_vec()));
    }

    /// NACK messages received.
    pub fn nacks(&self) -> Vec<String> {
        self.nacks.lock().unwrap().clone()
    }

    /// Serves on a Unix socket at `path`.
    pub fn serve_unix(&self, path: &Path) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path)?;
        let svc = SecretDiscoveryServiceServer::new(self.clone());
        Ok(tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(incoming)
                .await;
        }))
    }

    fn response(m: &(Vec<u8>, Vec<u8>, Vec<u8>), version: u64) -> DiscoveryResponse {
        let default = Secret {
            name: "default".into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: inline(&m.0),
                private_key: inline(&m.1),
                ..Default::default()
            })),
        };
        let roots = Secret {
            name: "ROOTCA".into(),
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: inline(&m.2),
                    ..Default::default()
                },
            )),
        };
        let any = |s: &Secret| Any {
            type_url: SECRET.to_string(),
            value: s.encode_to_vec(),
        };
        DiscoveryResponse {
            version_info: version.to_string(),
            resources: vec![any(&default), any(&roots)],
            type_url: SECRET.to_string(),
            nonce: version.to_string(),
            ..Default::default()
        }
    }
}

type SotwStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, tonic::Status>> + Send>>;
type DeltaStream =
    Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl SecretDiscoveryService for SdsServer {
    type StreamSecretsStream = SotwStream;
    type DeltaSecretsStream = DeltaStream;

    async fn stream_secrets(
        &self,
        request: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<SotwStream>, tonic::Status> {
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(8);
        let mut material = self.material.subscribe();
        let nacks = self.nacks.clone();
        let nodes = self.nodes.clone();
        tokio::spawn(async move {
            let mut version = 0u64;
            let mut sent_first = false;
            loop {
                tokio::select! {
                    req = incoming.message() => {
                        let Ok(Some(req)) = req else { return };
                        if let Some(n) = req.node {
                            nodes.lock().unwrap().push(n);
                        }
                        if let Some(e) = req.error_detail {
                            nacks.lock().unwrap().push(e.message);
                        }
                        if sent_first { continue; }
                        sent_first = true;
                    }
                    c = material.changed() => { if c.is_err() { return } }
                }
                version += 1;
                let resp = Self::response(&material.borrow_and_update().clone(), version);
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn delta_secrets(
        &self,
        _request: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<DeltaStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("use StreamSecrets"))
    }

    async fn fetch_secrets(
        &self,
        _request: tonic::Request<DiscoveryRequest>,
    ) -> Result<tonic::Response<DiscoveryResponse>, tonic::Status> {
        Ok(tonic::Response::new(Self::response(
            &self.material.borrow().clone(),
            1,
        )))
    }
}
