//! The local configuration: a multi-document YAML file of Kubernetes objects.
//!
//! Reads `Namespace`, `Service`, `Pod`, `ServiceEntry`, `BackendTLSPolicy` and the waypoint's own `Gateway` (also inside
//! `kind: List` documents, as `kubectl get -o yaml` prints them); other kinds are skipped
//! with a log line. [`load`] validates everything and builds a complete snapshot or fails
//! with an error naming the object and field; [`watch`] re-loads on change.

pub mod authn;
pub mod authz;
mod backend_tls;
pub mod destination_rule;
mod error;
pub mod ext_authz;
pub mod mesh;
mod objects;
mod parse;
pub mod routes;
mod secret;
pub mod service_entry;
pub mod telemetry;
mod translate;
mod watch;

pub use error::LocalConfigError;
pub use parse::{parse, Objects};
pub use translate::{translate, translate_with_status};
pub use watch::watch;

use std::path::Path;

use filters::{Snapshot, SourceOptions};

/// Reads, validates and translates the file at `path` into a snapshot numbered `version`.
pub fn load(
    path: &Path,
    options: &SourceOptions,
    version: u64,
) -> Result<Snapshot, LocalConfigError> {
    let bytes = std::fs::read(path).map_err(|source| LocalConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    load_bytes(path, &bytes, options, version)
}

/// Validates and translates `bytes`, the content of `path`, into a snapshot.
pub fn load_bytes(
    path: &Path,
    bytes: &[u8],
    options: &SourceOptions,
    version: u64,
) -> Result<Snapshot, LocalConfigError> {
    let text = std::str::from_utf8(bytes).map_err(|e| LocalConfigError::Yaml {
        document: 0,
        message: format!("not UTF-8: {e}"),
    })?;
    let objects = parse(text)?;
    translate(
        &objects,
        options,
        version,
        format!("file:{}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_shipped_example_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/local-config/mesh.yaml");
        let snap = super::load(&path, &filters::SourceOptions::default(), 1).unwrap();
        let echo = &snap.services()["demo/echo"];
        assert!(echo.served);
        assert_eq!(
            echo.port(80).unwrap().endpoints[0]
                .address()
                .unwrap()
                .to_string(),
            "127.128.0.11:8080"
        );
    }

    #[test]
    fn the_shipped_egress_example_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/local-config/egress.yaml");
        let snap = super::load(&path, &filters::SourceOptions::default(), 1).unwrap();
        let entry = &snap.services()["istio-egress/httpbin.org"];
        assert!(entry.served);
        let port = entry.port(80).unwrap();
        assert_eq!(
            port.endpoints[0].address().unwrap().to_string(),
            "127.0.0.1:8080"
        );
        assert!(!port.endpoints[0].workload.hbone);
        assert!(snap.resolve("240.240.0.1:80".parse().unwrap()).is_some());
        // The BackendTLSPolicy originates TLS to api.example.org with the ConfigMap's CA.
        let tls = snap.services()["istio-egress/api.example.org"]
            .port(80)
            .unwrap()
            .tls
            .clone()
            .unwrap();
        assert_eq!(tls.sni.as_deref(), Some("api.example.org"));
        assert!(tls.auto_san_validation);
        assert!(
            matches!(&tls.roots, filters::model::TlsRoots::Pem(p) if p.contains("BEGIN CERTIFICATE"))
        );
    }
}
