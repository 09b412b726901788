//! The proxies under test: the waypoint, the `--baseline` build and the waypoint
//! configured by the fake istiod, each pinned to the proxy core when taskset is there.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use testkit::process::{CertFiles, WaypointProcess};

use super::{istiod, BenchArgs, Fixture};

/// The proxies under test (fields in the order they are dropped).
pub(super) struct Proxies {
    /// The fake istiod serving that proxy, kept until the end.
    pub(super) _istiod_xds: Option<istiod::Istiod>,
    /// The waypoint configured over xDS with istiod's resources.
    pub(super) istiod: Option<WaypointProcess>,
    /// The `--baseline` build.
    pub(super) baseline: Option<WaypointProcess>,
    /// The waypoint measured.
    pub(super) wp: WaypointProcess,
    /// The proxy core, when taskset is available to pin to it.
    pub(super) pin: Option<usize>,
}

/// Starts the waypoint, the `--baseline` build (adding its scenario) and the istiod scenario.
pub(super) async fn start_proxies(
    a: &mut BenchArgs,
    fx: &Fixture,
    dir: &Path,
) -> anyhow::Result<Proxies> {
    let exe = crate::launcher::waypoint(a.waypoint.as_deref(), dir)?;
    eprintln!("measuring the waypoint at {}", exe.display());
    // Pin the proxy: run it under taskset when available.
    let taskset = Command::new("taskset").arg("--version").output().is_ok();
    let pin = taskset.then_some(a.proxy_core);
    let local = ["--config".to_string(), fx.config.display().to_string()];
    let wp = start_waypoint(&exe, "waypoint", &local, dir, pin).await?;
    let baseline = match a.baseline.clone() {
        Some(exe) => {
            let b = start_waypoint(&exe, "baseline", &local, dir, pin).await?;
            if !a.scenarios.iter().any(|s| s == "baseline") {
                a.scenarios.push("baseline".into());
            }
            Some(b)
        }
        None => None,
    };
    let (_istiod_xds, istiod) = if a.scenarios.iter().any(|s| s == "istiod") {
        start_istiod(a, fx, &exe, dir, pin).await?.unzip()
    } else {
        (None, None)
    };
    Ok(Proxies {
        _istiod_xds,
        istiod,
        baseline,
        wp,
        pin,
    })
}

/// Spawns the waypoint `exe` (under taskset when `pin` is set) and waits until it is ready.
async fn start_waypoint(
    exe: &Path,
    name: &str,
    source: &[String],
    dir: &Path,
    pin: Option<usize>,
) -> anyhow::Result<WaypointProcess> {
    let bin = match pin {
        Some(core) => {
            let wrapper = dir.join(format!("pinned-{name}.sh"));
            std::fs::write(
                &wrapper,
                format!(
                    "#!/bin/sh\nexec taskset -c {core} {} \"$@\"\n",
                    exe.display()
                ),
            )?;
            Command::new("chmod").arg("+x").arg(&wrapper).status()?;
            wrapper
        }
        None => exe.to_path_buf(),
    };
    let mut args: Vec<&str> = source.iter().map(String::as_str).collect();
    args.extend(["--concurrency", "1", "--log-level", "error"]);
    let mut p = WaypointProcess::spawn_source(&bin, &CertFiles::in_dir(dir), &args, None)?;
    p.wait_ready(Duration::from_secs(30))
        .await
        .map_err(anyhow::Error::msg)?;
    Ok(p)
}

/// Starts the fake istiod and the waypoint it configures (`None` when istiod cannot start).
async fn start_istiod(
    a: &BenchArgs,
    fx: &Fixture,
    exe: &Path,
    dir: &Path,
    pin: Option<usize>,
) -> anyhow::Result<Option<(istiod::Istiod, WaypointProcess)>> {
    let dump = a
        .xds_dump
        .clone()
        .unwrap_or_else(testkit::istio_dump::httpbin_dump);
    let rule = a.istiod_destination_rule;
    match istiod::Istiod::start(&fx.ca, &fx.waypoint_id, &dump, dir, rule).await {
        Ok(x) => {
            let p = start_waypoint(exe, "istiod", &x.source_args(), dir, pin).await?;
            Ok(Some((x, p)))
        }
        Err(e) => {
            eprintln!("skipping the istiod scenario: {e}");
            Ok(None)
        }
    }
}

/// Terminates the proxies, waiting up to 10 s for each to exit.
pub(super) async fn stop_proxies(p: &mut Proxies) {
    p.wp.terminate();
    if let Some(mut istiod) = p.istiod.take() {
        istiod.terminate();
        let _ = istiod.wait_exit(Duration::from_secs(10)).await;
    }
    if let Some(mut b) = p.baseline.take() {
        b.terminate();
        let _ = b.wait_exit(Duration::from_secs(10)).await;
    }
    let _ = p.wp.wait_exit(Duration::from_secs(10)).await;
}
