//! RequestAuthentication `jwksUri`: keys fetched from a local JWKS server, refreshed,
//! kept across failed refreshes; tokens refused while no keys were ever fetched.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use testkit::jwt::{now, JwtIssuer};

const ISS: &str = "https://issuer.example";

/// Serves `keys` at `/keys`; `broken` makes it answer 500.
struct JwksServer {
    addr: SocketAddr,
    keys: Arc<Mutex<String>>,
    broken: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(keys: &str) -> Self {
        Self::start_with(keys, None).await
    }

    async fn start_with(keys: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let keys = Arc::new(Mutex::new(keys.to_string()));
        let broken = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(AtomicUsize::new(0));
        let (k, b, h) = (keys.clone(), broken.clone(), hits.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (k, b, h) = (k.clone(), b.clone(), h.clone());
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let (k, b, h) = (k.clone(), b.clone(), h.clone());
                            async move {
                                h.fetch_add(1, Ordering::Relaxed);
                                let resp = if b.load(Ordering::Relaxed) {
                                    http::Response::builder()
                                        .status(500)
                                        .body(filters::body::full("down"))
                                } else if req.uri().path() == "/keys" {
                                    let body = k.lock().unwrap().clone();
                                    http::Response::builder()
                                        .header("content-type", "application/json")
                                        .body(filters::body::full(body))
                                } else {
                                    http::Response::builder()
                                        .status(404)
                                        .body(filters::body::empty())
                                };
                                Ok::<_, std::convert::Infallible>(resp.unwrap())
                            }
                        },
                    );
                    let builder = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                let _ = builder
                                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                                    .await;
                            }
                        }
                        None => {
                            let _ = builder
                                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                                .await;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            keys,
            broken,
            hits,
            task,
        }
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn request_authentication(uri: &str) -> String {
    format!("apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata:\n  name: jwt\n  namespace: {NS}\nspec:\n  targetRefs:\n  - {{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}}\n  jwtRules:\n  - issuer: {ISS}\n    jwksUri: {uri}\n")
}

async fn call(h: &Harness, token: Option<&str>) -> (u16, bytes::Bytes) {
    let fut = async {
        let conn = h.client().connect().await.unwrap();
        let mut http = conn.http1(authority(80)).await.unwrap();
        let mut b = http::Request::get("/").header("host", "echo");
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        let resp = http
            .send_request(b.body(filters::body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, body_bytes(resp).await)
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("answered in time")
}

/// Polls until `token` gets `want` (bounded: 10 s).
async fn eventually(h: &Harness, token: &str, want: u16) {
    let mut last = 0;
    for _ in 0..100 {
        last = call(h, Some(token)).await.0;
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("token still gets {last}, wanted {want}");
}

#[tokio::test]
async fn fetched_keys_verify_tokens_and_rotate_on_refresh() {
    let first = JwtIssuer::new(ISS, "k1");
    let second = JwtIssuer::new(ISS, "k2");
    let server = JwksServer::start(first.jwks()).await;
    let uri = format!("http://{}/keys", server.addr);
    let h = Harness::start(Spec {
        extra_yaml: vec![request_authentication(&uri)],
        extra_args: vec!["--jwks-refresh-interval", "300ms"],
        ..Spec::default()
    })
    .await;
    let exp = now() + 600;
    let old = first.token(serde_json::json!({"sub": "alice", "exp": exp}));
    let new = second.token(serde_json::json!({"sub": "alice", "exp": exp}));

    eventually(&h, &old, 200).await;
    assert_eq!(call(&h, None).await.0, 200, "no token still passes");
    assert_eq!(call(&h, Some(&new)).await.0, 401, "not a served key yet");

    // Rotation: the next refresh serves only the new key.
    *server.keys.lock().unwrap() = second.jwks().to_string();
    eventually(&h, &new, 200).await;
    assert_eq!(
        call(&h, Some(&old)).await.0,
        401,
        "the old key was rotated out"
    );

    // A failing server: refreshes fail, the last good keys stay in force.
    server.broken.store(true, Ordering::Relaxed);
    let hits = server.hits.load(Ordering::Relaxed);
    for _ in 0..50 {
        if server.hits.load(Ordering::Relaxed) >= hits + 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        server.hits.load(Ordering::Relaxed) >= hits + 2,
        "refreshes went on"
    );
    assert_eq!(call(&h, Some(&new)).await.0, 200, "last good keys kept");
    let (_, dump) = h.admin("/config_dump").await;
    assert!(
        dump.contains("status 500"),
        "the failure is visible in config_dump"
    );
}

#[tokio::test]
async fn unreachable_jwks_rejects_tokens_but_not_anonymous_requests() {
    let [closed] = testkit::free_ports::<1>();
    let issuer = JwtIssuer::new(ISS, "k1");
    let h = Harness::start(Spec {
        extra_yaml: vec![request_authentication(&format!(
            "http://127.0.0.1:{closed}/keys"
        ))],
        extra_args: vec!["--jwks-refresh-interval", "300ms"],
        ..Spec::default()
    })
    .await;
    let token = issuer.token(serde_json::json!({"sub": "alice", "exp": now() + 600}));
    for _ in 0..3 {
        let (status, body) = call(&h, Some(&token)).await;
        assert_eq!(
            (status, body.as_ref()),
            (401, b"Jwt verification fails".as_ref())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        call(&h, None).await.0,
        200,
        "requests without a token go on to policy"
    );
}

#[tokio::test]
async fn https_jwks_verified_against_extra_roots() {
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der())),
    )
    .unwrap();
    let issuer = JwtIssuer::new(ISS, "k1");
    let server = JwksServer::start_with(
        issuer.jwks(),
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("jwks-ca.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let ca_arg: &'static str = Box::leak(ca.display().to_string().into_boxed_str());
    let h = Harness::start(Spec {
        extra_yaml: vec![request_authentication(&format!(
            "https://127.0.0.1:{}/keys",
            server.addr.port()
        ))],
        extra_args: vec!["--jwks-refresh-interval", "300ms", "--jwks-ca-file", ca_arg],
        ..Spec::default()
    })
    .await;
    let token = issuer.token(serde_json::json!({"sub": "alice", "exp": now() + 600}));
    eventually(&h, &token, 200).await;
    assert!(server.hits.load(Ordering::Relaxed) >= 1);
}
