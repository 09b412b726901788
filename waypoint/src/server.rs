//! Assembles the Pingora server: the HBONE listener, readiness and admin services, the
//! configuration and certificate watchers; and owns shutdown.
//!
//! Shutdown (SIGTERM or `POST /quitquitquit`): Pingora stops accepting; every HBONE
//! connection sends GOAWAY and finishes its in-flight streams; idle HTTP/1.1 keep-alive
//! connections inside tunnels close. The process exits as soon as no HBONE connection
//! remains, or when the drain timeout expires.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::{ListenerConfig, ALPN};
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service;
use pingora_core::services::ServiceWithDependents;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;

use crate::admin::{Admin, Readiness, StaticRoutes};
use crate::inbound::HboneInbound;
use crate::state::Proxy;
use hbone::tls::{server_resolver, SpiffeClientVerifier};

/// Listener addresses and runtime sizing.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// HBONE listener.
    pub hbone_addr: SocketAddr,
    /// Readiness listener (none under pilot-agent: the bootstrap's static listener).
    pub ready_addr: Option<SocketAddr>,
    /// Admin listener.
    pub admin_addr: SocketAddr,
    /// Prometheus metrics listener (none under pilot-agent: the bootstrap's 15090).
    pub metrics_addr: Option<SocketAddr>,
    /// The bootstrap's static HTTP listeners (routes to static clusters).
    pub static_listeners: Vec<xds::ads::static_listeners::StaticListener>,
    /// Worker threads for the HBONE listener.
    pub threads: usize,
    /// Connection cap and TLS handshake timeout of the HBONE listener.
    pub admission: crate::inbound::admission::AdmissionLimits,
}

/// A task run for the life of the server (configuration and certificate watchers).
pub type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

struct Tasks(Mutex<Vec<Task>>);

#[async_trait]
impl BackgroundService for Tasks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let tasks: Vec<Task> = std::mem::take(&mut *self.0.lock().expect("tasks lock"));
        let handles: Vec<_> = tasks.into_iter().map(tokio::spawn).collect();
        let _ = shutdown.wait_for(|s| *s).await;
        for h in handles {
            h.abort();
        }
    }
}

/// Exits the process once shutdown has drained every HBONE connection, or at the timeout.
struct Drain {
    proxy: Arc<Proxy>,
}

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let _ = shutdown.wait_for(|s| *s).await;
        let started = Instant::now();
        let timeout = self.proxy.options.drain_timeout;
        tracing::info!(?timeout, "draining");
        loop {
            let open = self.proxy.stats.hbone_connections.load(Ordering::Relaxed);
            if open == 0 {
                tracing::info!(elapsed = ?started.elapsed(), "drained; exiting");
                std::process::exit(0);
            }
            if started.elapsed() >= timeout {
                tracing::warn!(open, "drain timeout reached; exiting with connections open");
                std::process::exit(0);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// SIGTERM or `/quitquitquit` start a graceful shutdown; SIGINT a fast one.
struct Signals {
    quit: Arc<Notify>,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM received"); ShutdownSignal::GracefulTerminate }
            _ = self.quit.notified() => ShutdownSignal::GracefulTerminate,
            _ = int.recv() => { tracing::info!("SIGINT received"); ShutdownSignal::FastShutdown }
        }
    }
}

/// Runs the waypoint until shutdown. `tasks` run in the background for its lifetime.
pub fn run(proxy: Arc<Proxy>, options: ServerOptions, tasks: Vec<Task>) {
    let drain_secs = proxy.options.drain_timeout.as_secs().max(1) + 1;
    let conf = ServerConf {
        threads: options.threads.max(1),
        grace_period_seconds: Some(drain_secs),
        graceful_shutdown_timeout_seconds: Some(1),
        // One single-threaded runtime per worker thread: a tunnel's tasks (HBONE
        // connection, HTTP session, upstream connection) stay on one thread, and wakeups
        // stay thread-local.
        work_stealing: false,
        // Pingora's own timeouts (the 60 s TLS handshake timeout on the listener) use
        // tokio's timer rather than its "fast timeout", whose clock thread wakes every
        // 10 ms for the life of the process: 100 context switches a second on the proxy's
        // core, about 2 ms of CPU a second, with nothing to time (issue 7).
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut tls = TlsSettings::with_callbacks(Box::new(NoCallbacks)).expect("TLS settings");
    tls.set_cert_resolver(server_resolver(proxy.certs.clone()));
    let verifier =
        SpiffeClientVerifier::new(proxy.certs.clone(), proxy.options.trust_domain.clone());
    tls.set_client_cert_verifier(verifier.clone());
    tls.set_alpn(ALPN::H2);
    let admission = Arc::new(crate::inbound::admission::Admission::new(
        proxy.clone(),
        options.admission,
    ));
    let mut hbone = Service::new(
        "hbone".to_string(),
        HboneInbound::new(proxy.clone(), verifier, admission.clone()),
    );
    hbone.endpoints().set_pre_tls_callback(admission);
    hbone.add_listener(
        ListenerConfig::tcp(options.hbone_addr.to_string())
            .tls(tls)
            .l4_buffer(L4BufferSettings {
                read: Some(hbone::settings::TLS_READ_BUFFER),
                write: None,
            }),
    );

    let mut http_services: Vec<Box<dyn ServiceWithDependents>> = Vec::new();
    if let Some(addr) = options.ready_addr {
        let mut ready = Service::new("readiness".to_string(), Readiness::new(proxy.clone()));
        ready.add_tcp(&addr.to_string());
        ready.threads = Some(1);
        http_services.push(Box::new(ready));
    }
    for l in &options.static_listeners {
        let mut s = Service::new(l.name.clone(), StaticRoutes::new(l.clone()));
        s.add_tcp(&l.address.to_string());
        s.threads = Some(1);
        http_services.push(Box::new(s));
    }

    let quit = Arc::new(Notify::new());
    let mut admin = Service::new("admin".to_string(), Admin::new(proxy.clone(), quit.clone()));
    admin.add_tcp(&options.admin_addr.to_string());
    admin.threads = Some(1);

    let metrics = options.metrics_addr.map(|addr| {
        let mut metrics = Service::new(
            "metrics".to_string(),
            crate::admin::Metrics::new(proxy.clone()),
        );
        metrics.add_tcp(&addr.to_string());
        metrics.threads = Some(1);
        metrics
    });

    let mut bg = background_service("watchers", Tasks(Mutex::new(tasks)));
    bg.threads = Some(1);
    let mut drain = background_service(
        "drain",
        Drain {
            proxy: proxy.clone(),
        },
    );
    drain.threads = Some(1);

    server.add_service(hbone);
    server.add_services(http_services);
    server.add_service(admin);
    if let Some(metrics) = metrics {
        server.add_service(metrics);
    }
    server.add_service(bg);
    server.add_service(drain);
    tracing::info!(
        hbone = %options.hbone_addr,
        ready = ?options.ready_addr,
        admin = %options.admin_addr,
        metrics = ?options.metrics_addr,
        static_listeners = ?options.static_listeners.iter().map(|l| l.address).collect::<Vec<_>>(),
        "waypoint starting"
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals { quit }),
    });
}

struct NoCallbacks;

#[async_trait]
impl pingora_core::listeners::TlsAccept for NoCallbacks {}
