//! Allocations per request in the waypoint, counted: this executable runs the same proxy
//! code with its counting allocator (`waypoint::alloc::Counting`; the `waypoint` binary
//! measured for time does not count), configured as the measured scenario, and one tunnel
//! carries sequential HTTP/1.1 requests. The count is the same run after run: a
//! before/after for every change, where times on this machine are noise.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hbone::tls::CertStore;
use http::Request;
use http_body_util::BodyExt;
use testkit::client::HboneClient;
use testkit::process::{CertFiles, WaypointProcess};

use super::Fixture;

/// Requests counted (after one that opens the connections and warms the caches).
const COUNTED: u64 = 400;

/// The waypoint's allocations so far (`waypoint_allocations_total`, exposed by a proxy
/// that counts them).
pub async fn allocations(wp: &WaypointProcess) -> anyhow::Result<u64> {
    let path = "/stats/prometheus?filter=^waypoint_allocations_total$";
    let (_, page) = testkit::process::http_get(wp.metrics, path).await?;
    page.lines()
        .find_map(|l| {
            l.strip_prefix("waypoint_allocations_total ")?
                .trim()
                .parse()
                .ok()
        })
        .context("no waypoint_allocations_total in the metrics")
}

/// What one request looks like in a scenario.
pub(super) struct Target {
    pub(super) authority: SocketAddr,
    pub(super) host: String,
    pub(super) path: String,
}

/// Starts this executable as the proxy with `source` arguments, sends [`COUNTED`] + 1
/// requests to `target` over one tunnel, and returns the allocations per request (the
/// reading of the counter itself subtracted).
pub(super) async fn per_request(
    fx: &Fixture,
    dir: &Path,
    source: &[String],
    target: &Target,
) -> anyhow::Result<f64> {
    let exe = crate::launcher::this_executable(dir)?;
    let mut args: Vec<&str> = source.iter().map(String::as_str).collect();
    args.extend(["--concurrency", "1", "--log-level", "error"]);
    let mut wp = WaypointProcess::spawn_source(&exe, &CertFiles::in_dir(dir), &args, None)?;
    wp.wait_ready(Duration::from_secs(30))
        .await
        .map_err(anyhow::Error::msg)?;
    let certs = Arc::new(CertStore::fixed(fx.ca.issue(&fx.client_id)?.certs()?));
    let client = HboneClient::new(wp.hbone, certs, fx.waypoint_id.clone());
    let conn = client.connect().await.context("HBONE connect")?;
    let mut http = conn.http1(target.authority).await?;
    let mut counted = None;
    for i in 0..=COUNTED {
        if i == 1 {
            let a = allocations(&wp).await?;
            let b = allocations(&wp).await?;
            counted = Some((b, b.saturating_sub(a)));
        }
        let req = Request::get(target.path.as_str())
            .header("host", target.host.as_str())
            .body(filters::body::empty())?;
        http.ready().await?;
        let resp = http.send_request(req).await?;
        anyhow::ensure!(resp.status().is_success(), "status {}", resp.status());
        resp.into_body().collect().await?;
    }
    let (before, reading) = counted.context("no requests counted")?;
    let after = allocations(&wp).await?;
    wp.terminate();
    wp.wait_exit(Duration::from_secs(10)).await;
    Ok(after.saturating_sub(before + reading) as f64 / COUNTED as f64)
}
