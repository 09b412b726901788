//! Which `waypoint` the tools start, as one executable path a child process can run.

use std::path::{Path, PathBuf};

/// The first argument that makes this executable run the proxy (hidden from `--help`).
pub const SELF_EXEC: &str = "waypoint";

/// The proxy to measure: `explicit` when given; else the `waypoint` binary beside this
/// executable (`target/<profile>/waypoint`, what `cargo build -p waypoint` writes, with
/// the shipped allocator and nothing else); else [`this_executable`].
pub fn waypoint(explicit: Option<&Path>, dir: &Path) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let this = std::env::current_exe()?;
    match this.parent().map(|d| d.join("waypoint")) {
        Some(sibling) if sibling.is_file() => Ok(sibling),
        _ => this_executable(dir),
    }
}

/// This executable as the proxy (the same `waypoint::cli` the binary runs), through a
/// script in `dir` that runs `<this executable> waypoint "$@"`: what the demo starts, so
/// that one `cargo run` is enough and no older `waypoint` build is picked up.
pub fn this_executable(dir: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let this = std::env::current_exe()?;
    let script = dir.join("waypoint.sh");
    // WAYPOINT_WRAP runs the proxy under another command (valgrind, perf, strace).
    let wrap = std::env::var("WAYPOINT_WRAP").unwrap_or_default();
    let body = format!(
        "#!/bin/sh\nexec {wrap} '{}' {SELF_EXEC} \"$@\"\n",
        this.display()
    );
    std::fs::write(&script, body)?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    Ok(script)
}
