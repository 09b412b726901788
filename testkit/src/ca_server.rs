//! istiod's CA for tests: `istio.v1.auth.IstioCertificateService/CreateCertificate`,
//! checking the bearer token and that the CSR asks for exactly the token's SPIFFE identity,
//! then signing it with a [`DevCa`] for a short lifetime. Every request is recorded.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hbone::tls::DevCa;
use xds::ca::proto::{self, IstioCertificateRequest, IstioCertificateResponse};

/// One `CreateCertificate` call as the CA saw it.
#[derive(Debug, Clone)]
pub struct CaRequest {
    /// The `authorization` header.
    pub authorization: Option<String>,
    /// The `clusterid` header.
    pub cluster_id: Option<String>,
    /// The CSR's subject alternative names (when it parsed).
    pub sans: Vec<String>,
    /// The requested lifetime, seconds.
    pub validity_duration: i64,
    /// The issued leaf (PEM), or the refusal's message.
    pub outcome: Result<String, String>,
}

struct Shared {
    ca: Arc<DevCa>,
    token: String,
    identity: String,
    lifetime: Duration,
    requests: Mutex<Vec<CaRequest>>,
}

/// The CA; cloning shares its state. Serve it with [`CaServer::service`] in a tonic server
/// (beside the ADS server, as istiod serves both on 15012).
#[derive(Clone)]
pub struct CaServer {
    shared: Arc<Shared>,
}

impl CaServer {
    /// A CA accepting `Bearer <token>` for `identity` (a SPIFFE URI), issuing leaves valid
    /// for `lifetime` whatever the request asks.
    pub fn new(ca: Arc<DevCa>, token: &str, identity: &str, lifetime: Duration) -> Self {
        Self {
            shared: Arc::new(Shared {
                ca,
                token: token.to_string(),
                identity: identity.to_string(),
                lifetime,
                requests: Mutex::default(),
            }),
        }
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<CaRequest> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// The tonic service.
    pub fn service(&self) -> CaService {
        CaService(self.clone())
    }

    fn create(
        &self,
        request: tonic::Request<IstioCertificateRequest>,
    ) -> Result<IstioCertificateResponse, tonic::Status> {
        let header = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let mut record = CaRequest {
            authorization: header("authorization"),
            cluster_id: header("clusterid"),
            sans: Vec::new(),
            validity_duration: request.get_ref().validity_duration,
            outcome: Err(String::new()),
        };
        let result = self.sign(&mut record, &request.get_ref().csr);
        record.outcome = match &result {
            Ok(leaf) => Ok(leaf.clone()),
            Err(status) => Err(status.message().to_string()),
        };
        self.shared.requests.lock().unwrap().push(record);
        let leaf = result?;
        Ok(IstioCertificateResponse {
            cert_chain: vec![leaf, self.shared.ca.root_pem()],
        })
    }

    fn sign(&self, record: &mut CaRequest, csr: &str) -> Result<String, tonic::Status> {
        let expected = format!("Bearer {}", self.shared.token);
        if record.authorization.as_deref() != Some(expected.as_str()) {
            return Err(tonic::Status::unauthenticated(
                "authenticate: the bearer token is not valid",
            ));
        }
        let signed = self
            .shared
            .ca
            .sign_csr(csr, self.shared.lifetime)
            .map_err(|e| tonic::Status::invalid_argument(format!("CSR does not parse: {e}")))?;
        record.sans = signed.sans.clone();
        if signed.sans != [self.shared.identity.clone()] {
            return Err(tonic::Status::permission_denied(format!(
                "the CSR asks for {:?}; the token allows only {}",
                signed.sans, self.shared.identity
            )));
        }
        Ok(signed.leaf_pem)
    }
}

/// The CA as a tonic service (routing `CreateCertificate`, `UNIMPLEMENTED` otherwise).
#[derive(Clone)]
pub struct CaService(CaServer);

impl tonic::server::NamedService for CaService {
    const NAME: &'static str = proto::SERVICE;
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>;

struct Create(CaServer);

impl tonic::server::UnaryService<IstioCertificateRequest> for Create {
    type Response = IstioCertificateResponse;
    type Future = BoxFuture<tonic::Response<IstioCertificateResponse>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<IstioCertificateRequest>) -> Self::Future {
        let result = self.0.create(request).map(tonic::Response::new);
        Box::pin(async move { result })
    }
}

impl<B> tower::Service<http::Request<B>> for CaService
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() == proto::CREATE_CERTIFICATE {
            let method = Create(self.0.clone());
            return Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(method, req).await)
            });
        }
        Box::pin(async move { Ok(tonic::Status::unimplemented("unknown method").into_http()) })
    }
}
