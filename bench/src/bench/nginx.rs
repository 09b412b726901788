//! The nginx peer of the benchmark: Debian's nginx as an mTLS-terminating HTTP reverse
//! proxy (TLS 1.3, client certificate required and verified against the dev CA) with an
//! mTLS keepalive upstream to the echo app over TLS, one worker, pinned like the waypoint.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testkit::free_ports;

/// Host name the upstream echo app's certificate carries, checked by nginx.
pub const UPSTREAM_NAME: &str = "echo.default.svc.cluster.local";

/// The nginx binary: `nginx` on `PATH`, else Debian's `/usr/sbin/nginx`.
pub fn find() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("nginx"))
            .find(|f| f.is_file())
    });
    on_path.or_else(|| {
        let f = PathBuf::from("/usr/sbin/nginx");
        f.is_file().then_some(f)
    })
}

/// nginx's own version line (`nginx version: nginx/1.22.1`), for the report.
pub fn version(bin: &Path) -> String {
    Command::new(bin)
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .unwrap_or_default()
}

/// Files nginx needs, all PEM: its own chain and key (server and upstream client
/// certificate) and the roots that verify clients and the upstream.
pub struct NginxFiles<'a> {
    /// Certificate chain.
    pub chain: &'a Path,
    /// Private key.
    pub key: &'a Path,
    /// Root bundle.
    pub root: &'a Path,
}

/// A running nginx (master and one worker); stopped when dropped.
pub struct Nginx {
    child: Child,
    /// The HTTPS listener.
    pub addr: SocketAddr,
    worker: u32,
}

impl Nginx {
    /// Writes the configuration into `dir` and starts nginx in the foreground, pinned to
    /// `core` with `taskset` when given, proxying to `upstream` (the TLS echo app).
    pub async fn start(
        bin: &Path,
        dir: &Path,
        core: Option<usize>,
        files: &NginxFiles<'_>,
        upstream: SocketAddr,
    ) -> anyhow::Result<Self> {
        let [port] = free_ports::<1>();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let conf = dir.join("nginx.conf");
        std::fs::create_dir_all(dir.join("nginx-tmp"))?;
        std::fs::write(&conf, config(dir, addr, upstream, files))?;
        let child = super::pinned(bin, core)
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("nginx-error.log"))
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()?;
        let mut nginx = Self {
            child,
            addr,
            worker: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = nginx.child.try_wait()? {
                let log = std::fs::read_to_string(dir.join("nginx-error.log")).unwrap_or_default();
                anyhow::bail!("nginx exited early ({status}): {log}");
            }
            if nginx.worker == 0 {
                nginx.worker = child_of(nginx.child.id()).unwrap_or(0);
            }
            if nginx.worker != 0 && tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(nginx);
            }
            if Instant::now() > deadline {
                anyhow::bail!("nginx not listening on {addr} in time");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// CPU time of the master and the worker, seconds.
    pub fn cpu_seconds(&self) -> f64 {
        super::cpu::cpu_seconds(self.child.id()) + super::cpu::cpu_seconds(self.worker)
    }

    /// Peak resident memory (`VmHWM`) of the master plus the worker, KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        vm_hwm_kib(self.child.id()) + vm_hwm_kib(self.worker)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid touches no memory. SIGTERM is nginx's
        // fast shutdown (the worker exits too).
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(dir: &Path, addr: SocketAddr, upstream: SocketAddr, f: &NginxFiles<'_>) -> String {
    let d = dir.display();
    let (chain, key, root) = (f.chain.display(), f.key.display(), f.root.display());
    // As root, nginx would switch workers to `nobody`, who cannot read the private
    // temporary directory; the worker needs no privileges either way.
    // SAFETY: geteuid has no preconditions.
    let user = if unsafe { libc::geteuid() } == 0 {
        "user root;"
    } else {
        ""
    };
    format!(
        r#"# Written by `waypoint bench`: the nginx peer scenario.
worker_processes 1;
daemon off;
master_process on;
{user}
pid {d}/nginx.pid;
error_log {d}/nginx-error.log error;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/nginx-tmp/body;
  proxy_temp_path {d}/nginx-tmp/proxy;
  fastcgi_temp_path {d}/nginx-tmp/fastcgi;
  uwsgi_temp_path {d}/nginx-tmp/uwsgi;
  scgi_temp_path {d}/nginx-tmp/scgi;
  # The waypoint has no per-connection request limit either.
  keepalive_requests 1000000000;
  keepalive_timeout 300s;
  upstream echo {{
    server {upstream};
    keepalive 32;
    keepalive_requests 1000000000;
    keepalive_timeout 300s;
  }}
  server {{
    listen {addr} ssl;
    ssl_protocols TLSv1.3;
    ssl_certificate {chain};
    ssl_certificate_key {key};
    ssl_client_certificate {root};
    ssl_verify_client on;
    location / {{
      proxy_pass https://echo;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_ssl_protocols TLSv1.3;
      proxy_ssl_certificate {chain};
      proxy_ssl_certificate_key {key};
      proxy_ssl_trusted_certificate {root};
      proxy_ssl_verify on;
      proxy_ssl_name {UPSTREAM_NAME};
      proxy_ssl_session_reuse on;
      proxy_max_temp_file_size 0;
    }}
  }}
}}
"#
    )
}

/// The first process whose parent is `parent` (nginx's worker).
fn child_of(parent: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        let rest = stat.rsplit_once(')')?.1;
        let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
        (ppid == parent).then_some(pid)
    })
}

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}
