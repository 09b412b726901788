//! SDS: the waypoint's certificate (`default`) and trust bundle (`ROOTCA`) from
//! pilot-agent's SDS socket, streamed (State of the World) so that rotations arrive as they
//! happen. Each complete pair is handed to a [`SecretSink`]; a secret the sink refuses is
//! NACKed and the current certificates stay.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, DataSource, Node};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::google::rpc::Status;
use prost::Message;
use tokio::sync::mpsc;

use super::connect::{self, XdsAddress};
use super::types::SECRET;

/// The workload certificate's secret name.
pub const DEFAULT: &str = "default";
/// The trust bundle's secret name.
pub const ROOTCA: &str = "ROOTCA";

/// PEM key material from SDS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMaterial {
    /// Certificate chain, leaf first.
    pub chain: Vec<u8>,
    /// Private key.
    pub key: Vec<u8>,
    /// Trusted roots.
    pub roots: Vec<u8>,
}

/// Where certificates go (the proxy's certificate store).
pub trait SecretSink: Send + Sync {
    /// Installs `material`; an error is NACKed and the current material stays.
    fn install(&self, material: &KeyMaterial) -> Result<(), String>;
}

impl<F> SecretSink for F
where
    F: Fn(&KeyMaterial) -> Result<(), String> + Send + Sync,
{
    fn install(&self, material: &KeyMaterial) -> Result<(), String> {
        self(material)
    }
}

/// Why SDS failed.
#[derive(Debug, thiserror::Error)]
pub enum SdsError {
    /// Connecting failed.
    #[error("connecting to SDS at {address}: {source}")]
    Connect {
        /// The server.
        address: String,
        /// The transport error, with its causes.
        source: super::connect::ConnectError,
    },
    /// The stream failed.
    #[error("SDS stream: {0}")]
    Stream(#[from] tonic::Status),
    /// No complete pair in time.
    #[error("no certificate from SDS within {0:?}")]
    Timeout(Duration),
    /// The stream ended.
    #[error("SDS stream closed")]
    Closed,
}

/// The SDS client.
#[derive(Clone)]
pub struct SdsClient {
    /// pilot-agent's SDS socket.
    pub address: XdsAddress,
    /// Who we are.
    pub node: Node,
}

fn bytes(ds: Option<&DataSource>) -> Option<Vec<u8>> {
    match ds?.specifier.as_ref()? {
        Specifier::InlineBytes(b) => Some(b.clone()),
        Specifier::InlineString(s) => Some(s.as_bytes().to_vec()),
        Specifier::Filename(f) => std::fs::read(f).ok(),
        Specifier::EnvironmentVariable(v) => std::env::var(v).ok().map(String::into_bytes),
    }
}

#[derive(Default)]
struct Pending {
    chain_key: Option<(Vec<u8>, Vec<u8>)>,
    roots: Option<Vec<u8>>,
}

impl Pending {
    /// Records the secrets of one response; returns a reason for a secret it cannot use.
    fn absorb(&mut self, resp: &DiscoveryResponse) -> Result<(), String> {
        for any in &resp.resources {
            let s = Secret::decode(any.value.as_slice())
                .map_err(|e| format!("secret: cannot decode: {e}"))?;
            match (&s.name[..], &s.r#type) {
                (DEFAULT, Some(secret::Type::TlsCertificate(t))) => {
                    let chain = bytes(t.certificate_chain.as_ref())
                        .ok_or("secret default: certificate_chain missing")?;
                    let key = bytes(t.private_key.as_ref())
                        .ok_or("secret default: private_key missing")?;
                    self.chain_key = Some((chain, key));
                }
                (ROOTCA, Some(secret::Type::ValidationContext(v))) => {
                    self.roots = Some(
                        bytes(v.trusted_ca.as_ref()).ok_or("secret ROOTCA: trusted_ca missing")?,
                    );
                }
                (name, _) => return Err(format!("secret {name}: unexpected name or type")),
            }
        }
        Ok(())
    }

    fn complete(&self) -> Option<KeyMaterial> {
        let (chain, key) = self.chain_key.clone()?;
        Some(KeyMaterial {
            chain,
            key,
            roots: self.roots.clone()?,
        })
    }
}

type Stream = (
    mpsc::Sender<DiscoveryRequest>,
    tonic::Streaming<DiscoveryResponse>,
);

impl SdsClient {
    async fn open(&self) -> Result<Stream, SdsError> {
        let channel =
            connect::channel(&self.address)
                .await
                .map_err(|source| SdsError::Connect {
                    address: self.address.to_string(),
                    source,
                })?;
        let mut client =
            SecretDiscoveryServiceClient::with_interceptor(channel, self.address.credentials());
        let (tx, rx) = mpsc::channel(8);
        tx.send(DiscoveryRequest {
            node: Some(self.node.clone()),
            type_url: SECRET.to_string(),
            resource_names: vec![DEFAULT.to_string(), ROOTCA.to_string()],
            ..Default::default()
        })
        .await
        .map_err(|_| SdsError::Closed)?;
        let stream = client
            .stream_secrets(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok((tx, stream))
    }

    fn reply(resp: &DiscoveryResponse, error: Option<String>) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: SECRET.to_string(),
            version_info: if error.is_none() {
                resp.version_info.clone()
            } else {
                String::new()
            },
            response_nonce: resp.nonce.clone(),
            resource_names: vec![DEFAULT.to_string(), ROOTCA.to_string()],
            error_detail: error.map(|message| Status {
                code: 3,
                message,
                details: Vec::new(),
            }),
            ..Default::default()
        }
    }

    /// Fetches the first complete certificate and bundle (before the proxy starts).
    pub async fn fetch(&self, timeout: Duration) -> Result<KeyMaterial, SdsError> {
        let work = async {
            let (tx, mut stream) = self.open().await?;
            let mut pending = Pending::default();
            while let Some(resp) = stream.message().await? {
                let result = pending.absorb(&resp);
                let _ = tx.send(Self::reply(&resp, result.clone().err())).await;
                if let Some(m) = pending.complete() {
                    return Ok(m);
                }
            }
            Err(SdsError::Closed)
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| SdsError::Timeout(timeout))?
    }

    /// Streams until the process ends, installing every new pair; reconnects with backoff.
    pub async fn run(
        self,
        sink: std::sync::Arc<dyn SecretSink>,
        mut installed: Option<KeyMaterial>,
    ) {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.session(&*sink, &mut installed).await {
                Ok(()) => tracing::info!(server = %self.address, "SDS stream closed"),
                Err(e) => {
                    tracing::warn!(server = %self.address, error = %e, "SDS stream failed; keeping the current certificates")
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    async fn session(
        &self,
        sink: &dyn SecretSink,
        installed: &mut Option<KeyMaterial>,
    ) -> Result<(), SdsError> {
        let (tx, mut stream) = self.open().await?;
        let mut pending = Pending::default();
        while let Some(resp) = stream.message().await? {
            let mut result = pending.absorb(&resp);
            if result.is_ok() {
                if let Some(m) = pending.complete().filter(|m| installed.as_ref() != Some(m)) {
                    result = sink.install(&m);
                    match &result {
                        Ok(()) => {
                            tracing::info!("certificates rotated from SDS");
                            *installed = Some(m);
                        }
                        Err(e) => tracing::warn!(error = %e, "certificate from SDS refused"),
                    }
                }
            }
            tx.send(Self::reply(&resp, result.err()))
                .await
                .map_err(|_| SdsError::Closed)?;
        }
        Ok(())
    }
}
