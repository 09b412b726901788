//! Runs the `waypoint` binary as a child process, as a test or the demo does.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_loopback_ip, free_ports_on};

/// A waypoint child process.
pub struct WaypointProcess {
    child: Child,
    /// HBONE listener.
    pub hbone: SocketAddr,
    /// Readiness listener.
    pub ready: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// Prometheus metrics listener.
    pub metrics: SocketAddr,
}

/// Where the waypoint's certificate files are.
pub struct CertFiles {
    /// `cert-chain.pem`.
    pub chain: PathBuf,
    /// `key.pem`.
    pub key: PathBuf,
    /// `root-cert.pem`.
    pub root: PathBuf,
}

impl CertFiles {
    /// The files written by `IssuedCert::write(dir)`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            chain: dir.join("cert-chain.pem"),
            key: dir.join("key.pem"),
            root: dir.join("root-cert.pem"),
        }
    }
}

impl WaypointProcess {
    /// Starts `bin run` with `config` and `certs` on free loopback ports, plus `extra` args.
    pub fn spawn(
        bin: &Path,
        config: &Path,
        certs: &CertFiles,
        extra: &[&str],
    ) -> std::io::Result<Self> {
        Self::spawn_with_stdout(bin, config, certs, extra, None)
    }

    /// As [`WaypointProcess::spawn`], writing the process's stdout (access logs) to
    /// `stdout` when given.
    pub fn spawn_with_stdout(
        bin: &Path,
        config: &Path,
        certs: &CertFiles,
        extra: &[&str],
        stdout: Option<&Path>,
    ) -> std::io::Result<Self> {
        let config = config.to_string_lossy().into_owned();
        let mut args = vec!["--config", config.as_str()];
        args.extend_from_slice(extra);
        Self::spawn_source(bin, certs, &args, stdout)
    }

    /// Starts `bin run` with `args` naming the configuration source (`--config` or
    /// `--xds-address`), on free loopback ports.
    pub fn spawn_source(
        bin: &Path,
        certs: &CertFiles,
        args: &[&str],
        stdout: Option<&Path>,
    ) -> std::io::Result<Self> {
        let out = match stdout {
            Some(p) => Stdio::from(std::fs::File::create(p)?),
            None => Stdio::inherit(),
        };
        // Its own loopback IP: ports chosen on 127.0.0.1 could be taken by another test's
        // process or a client's ephemeral port before the waypoint binds them.
        let ip = free_loopback_ip(0);
        let [h, r, a, m] = free_ports_on::<4>(ip);
        let addr = |port: u16| SocketAddr::new(ip, port);
        let (hbone, ready, admin, mut metrics) = (addr(h), addr(r), addr(a), addr(m));
        // A metrics address in `args` (chosen ahead, for peers to know it) wins.
        let given = args
            .windows(2)
            .find(|w| w[0] == "--metrics-addr")
            .and_then(|w| w[1].parse().ok());
        if let Some(m) = given {
            metrics = m;
        }
        let metrics_arg = given
            .is_none()
            .then(|| ["--metrics-addr".to_string(), metrics.to_string()]);
        let child = Command::new(bin)
            .arg("run")
            .arg("--cert-chain")
            .arg(&certs.chain)
            .arg("--key")
            .arg(&certs.key)
            .arg("--root-cert")
            .arg(&certs.root)
            .args(["--hbone-addr", &hbone.to_string()])
            .args(["--ready-addr", &ready.to_string()])
            .args(["--admin-addr", &admin.to_string()])
            .args(metrics_arg.iter().flatten())
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .spawn()?;
        Ok(Self {
            child,
            hbone,
            ready,
            admin,
            metrics,
        })
    }

    /// Starts `bin run` with `args` alone (no certificate files, as `--istiod` runs) on
    /// free loopback ports, with `envs` added to its environment, its stdout and stderr
    /// (the log) written to `log`.
    pub fn spawn_logged(
        bin: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        log: &Path,
    ) -> std::io::Result<Self> {
        let file = std::fs::File::create(log)?;
        let ip = free_loopback_ip(0);
        let [h, r, a, m] = free_ports_on::<4>(ip);
        let addr = |port: u16| SocketAddr::new(ip, port);
        let (hbone, ready, admin, metrics) = (addr(h), addr(r), addr(a), addr(m));
        let child = Command::new(bin)
            .arg("run")
            .args(["--hbone-addr", &hbone.to_string()])
            .args(["--ready-addr", &ready.to_string()])
            .args(["--admin-addr", &admin.to_string()])
            .args(["--metrics-addr", &metrics.to_string()])
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .spawn()?;
        Ok(Self {
            child,
            hbone,
            ready,
            admin,
            metrics,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `/healthz/ready` answers 200; fails if the process exits or time runs out.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!("waypoint exited early: {status}"));
            }
            if let Ok((200, _)) = http_get(self.ready, "/healthz/ready").await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("waypoint not ready in time".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        // SAFETY: kill(2) on our own child's pid touches no memory.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
    }

    /// Waits for exit, at most `timeout`; returns the exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Peak resident memory (`VmHWM`) in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.child.id(), "VmHWM:")
    }

    /// Current resident memory (`VmRSS`) in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        proc_status_kib(self.child.id(), "VmRSS:")
    }
}

impl Drop for WaypointProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A minimal HTTP/1.1 GET over plain TCP (readiness and admin endpoints).
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_call(addr, "GET", path).await
}

/// A minimal HTTP/1.1 request over plain TCP, returning status and body.
pub async fn http_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").as_bytes())
        .await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .map_err(|_| std::io::Error::other("timeout"))??;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad response"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
