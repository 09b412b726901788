//! The mesh conformance suite, end to end, as part of `cargo test`.

use std::path::{Path, PathBuf};

/// The `waypoint` binary of this build, built on demand when only this package is tested.
fn waypoint_bin() -> PathBuf {
    if let Ok(p) = std::env::var("WAYPOINT_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = profile_dir.join("waypoint");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "-p", "waypoint", "--bin", "waypoint"])
            .status()
            .expect("cargo build");
        assert!(status.success(), "building the waypoint binary failed");
    }
    bin
}

/// The suite over the case files in `conformance/cases/<cases>`.
fn suite(cases: &str) -> conformance::Suite {
    let profile = if cases == "gateway" {
        conformance::Profile::Gateway
    } else {
        conformance::Profile::Mesh
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let testdata = std::env::var("WAYPOINT_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("../shared/testdata/gateway-api"));
    conformance::Suite {
        waypoint: waypoint_bin(),
        testdata,
        cases: root.join("conformance/cases").join(cases),
        base: if profile == conformance::Profile::Gateway {
            "gateway/base-manifests.yaml"
        } else {
            "mesh/manifests.yaml"
        }
        .into(),
        filter: std::env::var("CONFORMANCE_RUN").ok(),
        profile,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mesh_profile() {
    let report = conformance::run_suite(&suite("mesh"))
        .await
        .expect("suite runs");
    println!("{report}");
    let failures = report.failures();
    assert!(
        failures.is_empty(),
        "{} conformance tests failed:\n{report}",
        failures.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn authorization() {
    let report = conformance::run_suite(&suite("authz"))
        .await
        .expect("suite runs");
    println!("{report}");
    assert!(
        report.failures().is_empty(),
        "authorization conformance failed:\n{report}"
    );
}

/// Gateway-profile HTTPRoute/GRPCRoute tests that apply to a mesh, with their routes
/// re-attached to a Service.
#[tokio::test(flavor = "multi_thread")]
async fn gateway_profile_routes() {
    let report = conformance::run_suite(&suite("gateway"))
        .await
        .expect("suite runs");
    println!("{report}");
    assert!(
        report.failures().is_empty(),
        "gateway-profile conformance failed:\n{report}"
    );
}
