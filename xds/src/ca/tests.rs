use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};

use super::*;

const ID: &str = "spiffe://cluster.local/ns/default/sa/waypoint";

struct Root {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn root() -> Root {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Root { cert, key }
}

fn leaf(root: &Root, uri: &str) -> String {
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + Duration::from_secs(1_000);
    params.not_after = epoch + Duration::from_secs(2_000);
    let key = KeyPair::generate().unwrap();
    params.signed_by(&key, &root.cert, &root.key).unwrap().pem()
}

/// A scratch directory under the system's temporary directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("xds-ca-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn client(dir: &Scratch, address: &str, root: &Root) -> CaClient {
    let root_cert = dir.0.join("root-cert.pem");
    std::fs::write(&root_cert, root.cert.pem()).unwrap();
    let token_file = dir.0.join("istio-token");
    std::fs::write(&token_file, "token\n").unwrap();
    CaClient {
        target: Arc::new(IstiodTls {
            address: address.into(),
            server_name: "istiod.istio-system.svc".into(),
            root_cert,
            token_file,
            cluster_id: "Kubernetes".into(),
        }),
        identity: ID.into(),
        validity: Duration::from_secs(3600),
    }
}

#[test]
fn accepts_leaf_and_root_and_renews_at_half_life() {
    let (dir, ca) = (Scratch::new("accept"), root());
    let c = client(&dir, "127.0.0.1:15012", &ca);
    let response = IstioCertificateResponse {
        cert_chain: vec![leaf(&ca, ID), ca.cert.pem()],
    };
    let issued = c.accept(response, "KEY".into()).unwrap();
    assert_eq!(
        issued.material.roots,
        format!("{}\n", ca.cert.pem().trim_end()).into_bytes()
    );
    assert_eq!(
        String::from_utf8(issued.material.chain.clone())
            .unwrap()
            .matches("BEGIN CERTIFICATE")
            .count(),
        1
    );
    assert_eq!(
        issued.renew_at(),
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_500)
    );
}

#[test]
fn refuses_a_chain_without_root_or_for_another_identity() {
    let (dir, ca) = (Scratch::new("refuse"), root());
    let c = client(&dir, "127.0.0.1:15012", &ca);
    let alone = IstioCertificateResponse {
        cert_chain: vec![leaf(&ca, ID)],
    };
    let e = c.accept(alone, "KEY".into()).unwrap_err().to_string();
    assert!(
        e.contains("1 certificates; expected the leaf and the root"),
        "{e}"
    );
    let other = "spiffe://cluster.local/ns/default/sa/intruder";
    let wrong = IstioCertificateResponse {
        cert_chain: vec![leaf(&ca, other), ca.cert.pem()],
    };
    let e = c.accept(wrong, "KEY".into()).unwrap_err().to_string();
    assert!(e.contains(other) && e.contains(&format!("not {ID}")), "{e}");
}

#[tokio::test]
async fn names_the_missing_token_and_the_unreachable_ca() {
    let (dir, ca) = (Scratch::new("errors"), root());
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = closed.local_addr().unwrap().to_string();
    drop(closed);
    let c = client(&dir, &address, &ca);
    let e = c.issue().await.unwrap_err();
    assert!(matches!(e, CaError::Unreachable { .. }), "{e}");
    assert!(
        e.to_string().contains(&format!("connecting to {address}")),
        "{e}"
    );

    std::fs::remove_file(&c.target.token_file).unwrap();
    let e = c.issue().await.unwrap_err().to_string();
    assert!(
        e.contains(&format!(
            "cannot read the service account token {}",
            c.target.token_file.display()
        )),
        "{e}"
    );
}
