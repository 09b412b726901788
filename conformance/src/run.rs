//! Runs a suite of case files against fresh clusters.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::cases::{self, TestFile};
use crate::client::send;
use crate::cluster::Cluster;
use crate::compare::check;
use crate::report::{Outcome, Report};

/// Where a suite's inputs are.
#[derive(Debug, Clone)]
pub struct Suite {
    /// The `waypoint` binary.
    pub waypoint: PathBuf,
    /// The Gateway API testdata directory (holds `mesh/`, `gateway/`).
    pub testdata: PathBuf,
    /// The case files.
    pub cases: PathBuf,
    /// The base manifest, relative to `testdata`.
    pub base: String,
    /// Only tests whose name contains this.
    pub filter: Option<String>,
    /// Which conformance profile the cases come from.
    pub profile: Profile,
}

/// How a profile's tests reach the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// GAMMA: routes attach to Services; clients call Services by name.
    #[default]
    Mesh,
    /// Gateway-profile route tests run in the mesh: their routes are re-attached from the
    /// Gateway to a `frontend` Service in gateway-conformance-infra, which clients call with
    /// the test's Host header.
    Gateway,
}

/// Successes in a row that make a case pass, as upstream requires.
const CONSECUTIVE: usize = 3;
/// Requests a case may take to reach its streak.
const MAX_TRIES: usize = 12;

/// Runs every test of the suite; each gets its own cluster and waypoint.
pub async fn run_suite(suite: &Suite) -> anyhow::Result<Report> {
    let base = std::fs::read_to_string(suite.testdata.join(&suite.base))?;
    let mut report = Report::default();
    for test in cases::load_dir(&suite.cases)? {
        if suite
            .filter
            .as_ref()
            .is_some_and(|f| !test.name.contains(f.as_str()))
        {
            continue;
        }
        let result = run_test(
            &suite.waypoint,
            &suite.testdata,
            &base,
            &test,
            suite.profile,
        )
        .await;
        let skipped: Vec<String> = test
            .cases
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                c.skip
                    .as_ref()
                    .map(|why| format!("case {} skipped: {why}", i + 1))
            })
            .collect();
        report.outcomes.push(Outcome {
            test: test.name.clone(),
            features: test.features.clone(),
            cases: test.cases.len() + usize::from(test.weights.is_some()),
            result,
            skipped,
        });
    }
    Ok(report)
}

async fn run_test(
    bin: &Path,
    testdata: &Path,
    base: &str,
    test: &TestFile,
    profile: Profile,
) -> Result<(), String> {
    let manifest = test_manifest(testdata, test)?;
    let cluster = Cluster::start(bin, base, &manifest, profile)
        .await
        .map_err(|e| format!("setup: {e:#}"))?;
    for (i, case) in test.cases.iter().enumerate() {
        if case.skip.is_some() {
            continue;
        }
        run_case(&cluster, test, i, case, profile).await?;
    }
    for m in &test.mirrors {
        let mut last = Ok(());
        for _ in 0..m.attempts.unwrap_or(1).max(1) {
            last = check_mirror(&cluster, test, m, profile).await;
            if last.is_ok() {
                break;
            }
        }
        last?;
    }
    if let Some(hb) = &test.header_matches_backend {
        check_header_matches_backend(&cluster, test, hb, profile).await?;
    }
    if let Some(w) = &test.weights {
        // A sampled split can miss the tolerance by chance (about 1 in 60 for 70/30 over 500
        // requests); upstream retries the whole sample up to 10 times, we do up to 5.
        let mut last = Ok(());
        for _ in 0..5 {
            last = check_weights(&cluster, test, w, profile).await;
            if last.is_ok() {
                break;
            }
        }
        last?;
    }
    Ok(())
}

/// The test's manifest file (if any) followed by its inline objects.
fn test_manifest(testdata: &Path, test: &TestFile) -> Result<String, String> {
    let mut manifest = match &test.manifest {
        Some(m) => {
            std::fs::read_to_string(testdata.join(m)).map_err(|e| format!("manifest {m}: {e}"))?
        }
        None => String::new(),
    };
    if let Some(objects) = &test.objects {
        manifest.push_str("\n---\n");
        manifest.push_str(objects);
    }
    Ok(manifest)
}

/// Sends case `i` until its expectation holds CONSECUTIVE times in a row, or tries run out.
async fn run_case(
    cluster: &Cluster,
    test: &TestFile,
    i: usize,
    case: &cases::Case,
    profile: Profile,
) -> Result<(), String> {
    // Upstream's rule: the expectation must hold for CONSECUTIVE requests in a row,
    // within a bounded number of tries.
    let (mut streak, mut last) = (0, String::new());
    for _ in 0..MAX_TRIES {
        let outcome = match send(cluster, &case.request, &test.kind, profile).await {
            Ok(got) => check(&case.request, &case.expect, &got),
            Err(e) => Err(format!("request failed: {e:#}")),
        };
        match outcome {
            Ok(()) => {
                streak += 1;
                if streak == CONSECUTIVE {
                    break;
                }
            }
            Err(e) => {
                streak = 0;
                last = e;
            }
        }
    }
    if streak < CONSECUTIVE {
        return Err(format!(
            "case {} ({} {}): {last}",
            i + 1,
            case.request.host,
            case.request.path.as_deref().unwrap_or("/")
        ));
    }
    Ok(())
}

/// Checks that every answer's echoed `hb.header` names the pod that answered.
async fn check_header_matches_backend(
    cluster: &Cluster,
    test: &TestFile,
    hb: &cases::HeaderMatchesBackend,
    profile: Profile,
) -> Result<(), String> {
    let req = cases::Request {
        host: hb.host.clone(),
        path: hb.path.clone(),
        ..Default::default()
    };
    for _ in 0..hb.requests {
        let got = send(cluster, &req, &test.kind, profile)
            .await
            .map_err(|e| format!("headerMatchesBackend: {e:#}"))?;
        let pod = got.pod().unwrap_or_default().to_string();
        let values = got
            .echo
            .as_ref()
            .and_then(|e| {
                e.get("headers")?
                    .as_object()?
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(&hb.header))
                    .map(|(_, v)| v.clone())
            })
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default();
        match values.as_slice() {
            [v] if v.as_str().is_some_and(|v| pod.starts_with(v)) => {}
            other => {
                return Err(format!(
                    "headerMatchesBackend: {} = {other:?} at pod {pod}",
                    hb.header
                ))
            }
        }
    }
    Ok(())
}

async fn check_weights(
    cluster: &Cluster,
    test: &TestFile,
    w: &cases::Weights,
    profile: Profile,
) -> Result<(), String> {
    let req = cases::Request {
        host: w.host.clone(),
        path: w.path.clone(),
        ..Default::default()
    };
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..w.requests {
        let got = send(cluster, &req, &test.kind, profile)
            .await
            .map_err(|e| format!("weights: {e:#}"))?;
        if got.status != 200 {
            return Err(format!("weights: status {}", got.status));
        }
        let pod = got.pod().unwrap_or("?");
        let parts: Vec<&str> = pod.split('-').collect();
        let backend = parts[..parts.len().saturating_sub(2)].join("-");
        *counts.entry(backend).or_default() += 1;
    }
    for (backend, n) in &counts {
        if !w.backends.contains_key(backend) {
            return Err(format!(
                "weights: {n} requests reached {backend}, which should get none"
            ));
        }
    }
    for (backend, want) in &w.backends {
        let got = *counts.get(backend).unwrap_or(&0) as f64 / w.requests as f64;
        if (got - want).abs() > w.tolerance {
            return Err(format!(
                "weights: {backend} got {got:.3} of traffic (want {want} ± {})",
                w.tolerance
            ));
        }
    }
    Ok(())
}

async fn check_mirror(
    cluster: &Cluster,
    test: &TestFile,
    m: &cases::MirrorCheck,
    profile: Profile,
) -> Result<(), String> {
    let case = test
        .cases
        .get(m.case.wrapping_sub(1))
        .ok_or_else(|| format!("mirrors: no case {}", m.case))?;
    let before: Vec<usize> = m
        .backends
        .iter()
        .map(|b| cluster.requests_served(b))
        .collect();
    for _ in 0..m.requests {
        let got = send(cluster, &case.request, &test.kind, profile)
            .await
            .map_err(|e| format!("mirrors: {e:#}"))?;
        if got.status != case.expect.status.unwrap_or(200) {
            return Err(format!("mirrors: status {}", got.status));
        }
    }
    // Copies are fire-and-forget: give the last ones a moment to land.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for (b, before) in m.backends.iter().zip(before) {
        let copies = cluster.requests_served(b) - before;
        match m.fraction {
            None if copies < m.requests => {
                return Err(format!(
                    "mirrors: {b} received {copies} copies of {} requests",
                    m.requests
                ));
            }
            Some(f) => {
                let want = f * m.requests as f64;
                let tol = m.tolerance.unwrap_or(0.05) * want;
                if (copies as f64 - want).abs() > tol {
                    return Err(format!(
                        "mirrors: {b} received {copies} copies (want {want:.0} ± {tol:.0})"
                    ));
                }
            }
            None => {}
        }
    }
    Ok(())
}
