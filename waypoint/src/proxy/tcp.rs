//! TCP inside a tunnel: the bytes are copied to the chosen endpoint unchanged (inside an
//! HTTP `CONNECT`/`POST` to a proxy there when the port's DestinationRule sets `tunnel`),
//! each direction closed separately (half-close respected). Istio's TCP metrics are
//! recorded when the tunnel ends.

use std::sync::Arc;

use filters::authz::ext::{self, CheckError, CheckOutcome, CheckRequest, Provider};
use filters::authz::{self, Attributes, CustomOutcome, Denied, Subject};
use filters::balance;
use filters::model::{
    ProxyHeader, RequestContext, Service, Target, TunnelInfo, Unlisted, Workload,
};
use filters::route::Backend;

use super::tcp_limits::Outcome;
use crate::state::Proxy;
use crate::telemetry::attributes::Facts;
use crate::telemetry::labels::{PeerLabels, SourceLabels};
use crate::telemetry::metrics::{dimensions, OwnOverrides, TcpKey};
use crate::upstream::http_tunnel::TunnelIo;
use hbone::H2Stream;

/// Copies the tunnel to an endpoint of its target until both directions end.
pub async fn serve(proxy: Arc<Proxy>, info: Arc<TunnelInfo>, stream: H2Stream) {
    let snapshot = proxy.config.current();
    let metrics = &proxy.telemetry.metrics;
    let source = SourceLabels::new(PeerLabels::source(&info, &snapshot, &metrics.cluster));
    let addressed = match &info.target {
        Target::Service { service, .. } => Some(service.clone()),
        Target::Workload { .. } => None,
    };
    let (overrides, own) = snapshot.telemetry().metric_overrides_for(&info.target);
    // The destination Service is the one the tunnel was routed to (a TCP route's backend),
    // else the addressed one, as the HTTP path reports the routed backend's.
    let key = |routed: Option<&Arc<Service>>, workload: Option<&Arc<Workload>>, flags| {
        let service = routed.or(addressed.as_ref());
        let destination = metrics
            .destinations
            .get(service, workload, &metrics.cluster);
        // Dimensions read the connection (a TCP tunnel has no request attributes).
        let dimensions = if snapshot.telemetry().has_dimensions() {
            let facts = Facts {
                record: None,
                tunnel: &info,
                source: &source,
                destination: &destination,
                source_pod: info
                    .source_ip
                    .and_then(|ip| snapshot.workload(ip))
                    .map(|w| &**w),
                destination_pod: workload.map(|w| &**w),
                upstream: None,
            };
            dimensions::evaluate(overrides, &facts)
        } else {
            None
        };
        TcpKey {
            source: source.clone(),
            destination,
            flags,
            dimensions,
            overrides: own.cloned().map(OwnOverrides),
        }
    };
    // Opened is counted when the connection is set up (or fails to be), closed at the end.
    let was_opened = std::sync::atomic::AtomicBool::new(false);
    let start = std::time::SystemTime::now();
    let started = std::time::Instant::now();
    let accepted = tokio::time::Instant::now();
    let ended = copy(&proxy, &info, stream, accepted, |s, w| {
        metrics.tcp_opened(&key(s, w, "-"));
        was_opened.store(true, std::sync::atomic::Ordering::Relaxed);
    })
    .await;
    let (flags, workload) = (ended.flags, ended.workload.as_ref());
    let routed = ended.routed.as_ref().map(|(s, _)| s);
    if !was_opened.load(std::sync::atomic::Ordering::Relaxed) {
        metrics.tcp_opened(&key(routed, workload, flags));
    }
    let closed = key(routed, workload, flags);
    metrics.tcp_closed(&closed, ended.sent, ended.received);
    let logs = snapshot.telemetry().access_logs_for(&info.target, true);
    if !logs.is_empty() {
        let record = tcp_record(&info, &ended, start, started.elapsed());
        let facts = Facts {
            record: None,
            tunnel: &info,
            source: &source,
            destination: &closed.destination,
            source_pod: info
                .source_ip
                .and_then(|ip| snapshot.workload(ip))
                .map(|w| &**w),
            destination_pod: workload.map(|w| &**w),
            upstream: ended.address,
        };
        proxy
            .telemetry
            .access_log
            .log(&snapshot, logs, &record, &facts);
    }
}

/// How a tunnel ended.
struct Ended {
    /// Envoy response flags (`-` when none).
    flags: &'static str,
    /// The Service port a TCP route sent the tunnel to, when it is not the addressed one.
    routed: Option<(Arc<Service>, u16)>,
    /// The endpoint's workload, once one was picked.
    workload: Option<Arc<Workload>>,
    /// The endpoint's address.
    address: Option<std::net::SocketAddr>,
    /// Bytes sent to the client.
    sent: u64,
    /// Bytes received from the client.
    received: u64,
}

/// The access log record of a TCP tunnel, as Envoy's TCP proxy logs one: no request or
/// response code (`%RESPONSE_CODE%` is 0, `%REQ(...)%` and `%PROTOCOL%` are `-`).
fn tcp_record(
    info: &TunnelInfo,
    ended: &Ended,
    start: std::time::SystemTime,
    duration: std::time::Duration,
) -> filters::access_log::HttpRecord {
    let cluster = match (&ended.routed, &info.target) {
        // The cluster the tunnel went to: the routed backend's Service port.
        (Some((service, port)), _) | (None, Target::Service { service, port }) => {
            Some(format!("inbound-vip|{port}|tcp|{}", service.hostname))
        }
        (None, Target::Workload { workload, port }) => workload
            .primary_ip()
            .map(|ip| format!("inbound-pod|{port}||{ip}")),
    };
    filters::access_log::HttpRecord {
        start,
        method: String::new(),
        path: String::new(),
        protocol: "",
        request_headers: Default::default(),
        response_headers: Default::default(),
        code: 0,
        flags: ended.flags,
        details: String::new(),
        grpc_status: None,
        bytes_received: ended.received,
        bytes_sent: ended.sent,
        request_total: ended.received,
        response_total: ended.sent,
        duration,
        upstream_service_time: None,
        upstream_host: ended.address.map(|a| a.to_string()),
        upstream_cluster: cluster,
        downstream_local_address: info.authority.to_string(),
        downstream_remote_address: info
            .source_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into()),
        route_name: None,
        upstream_failure: None,
    }
}

/// Runs the tunnel; returns how it ended. `opened` runs once the upstream is connected.
async fn copy(
    proxy: &Arc<Proxy>,
    info: &Arc<TunnelInfo>,
    mut stream: H2Stream,
    accepted: tokio::time::Instant,
    opened: impl FnOnce(Option<&Arc<Service>>, Option<&Arc<Workload>>),
) -> Ended {
    let mut routed: Option<(Arc<Service>, u16)> = None;
    let ended = |routed: &Option<(Arc<Service>, u16)>,
                 flags,
                 picked: Option<&balance::Picked>,
                 sent,
                 received| Ended {
        flags,
        routed: routed.clone(),
        workload: picked.map(|p| p.workload.clone()),
        address: picked.map(|p| p.address),
        sent,
        received,
    };
    if let Err(policy) = authorize(proxy, info).await {
        tracing::info!(%policy, peer = %info.peer, "TCP tunnel denied by authorization");
        return ended(&routed, "-", None, 0, 0);
    }
    // A TCP route on the port draws the backend once per tunnel.
    let snapshot = proxy.config.current();
    let backend = match filters::route::tcp::backend(&snapshot, &info.target, &info.peer.namespace)
    {
        Ok(b) => b,
        Err(e) => {
            tracing::info!(error = %e, flag = e.response_flag(), "TCP tunnel closed: no usable backend");
            return ended(&routed, e.response_flag(), None, 0, 0);
        }
    };
    if let (
        Backend::Service { service, port },
        Target::Service {
            service: own,
            port: own_port,
        },
    ) = (&backend, &info.target)
    {
        if !Arc::ptr_eq(service, own) || port != own_port {
            routed = Some((service.clone(), *port));
        }
    }
    let port = match &info.target {
        Target::Service { service, port } => service.port(*port),
        Target::Workload { .. } => None,
    };
    // The port the endpoint is picked on: the routed backend's (its own endpoints, original
    // destination or forward proxy); the chain's settings (limits, hash policy, tunnel) stay
    // the addressed port's, as istiod writes one tcp_proxy per port.
    let picked_port = match (&routed, &backend) {
        (Some(_), Backend::Service { service, port }) => service.port(*port),
        _ => port,
    };
    // Bytes read from the client before connecting (a TLS ClientHello), sent on first.
    let mut first = Vec::new();
    let picked = match picked_port.and_then(|p| p.unlisted()) {
        Some(Unlisted::OriginalDst(o)) => {
            balance::pick_original(&backend, o, info.authority, &snapshot)
        }
        Some(Unlisted::ForwardProxy(fp)) => {
            let upstream_port =
                picked_port.map_or(info.authority.port(), |p| match p.target_port {
                    filters::model::TargetPort::Number(n) => n,
                    filters::model::TargetPort::Named(_) => p.port,
                });
            match by_sni(&backend, fp, upstream_port, &mut stream).await {
                Ok((bytes, picked)) => {
                    first = bytes;
                    Ok(picked)
                }
                Err(e) => Err(e),
            }
        }
        _ => balance::pick(&backend, source_hash(port, info)),
    };
    let picked = match picked {
        Ok(p) => p,
        Err(e) => {
            tracing::info!(error = %e, flag = e.response_flag(), "TCP tunnel closed: no endpoint");
            return ended(&routed, e.response_flag(), None, 0, 0);
        }
    };
    // TCP has no Host: only an explicit SNI is sent.
    let sni = picked.tls.as_ref().and_then(|t| t.sni.clone());
    let header = picked
        .proxy_protocol
        .map(|v| ProxyHeader::new(v, info.source_addr(), info.authority));
    let connect = proxy
        .upstream
        .connect(&picked, sni.as_deref(), header.as_ref());
    let connected = match connect.await {
        Ok(u) => through_proxy(u, port, &picked).await,
        Err(e) => Err(e),
    };
    let mut upstream = match connected {
        Ok(u) => u,
        Err(e) => {
            tracing::info!(error = %e, flag = e.response_flag(), "TCP tunnel closed: connect failed");
            return ended(&routed, e.response_flag(), Some(&picked), 0, 0);
        }
    };
    opened(routed.as_ref().map(|(s, _)| s), Some(&picked.workload));
    if !first.is_empty() {
        use tokio::io::AsyncWriteExt;
        if let Err(e) = upstream.write_all(&first).await {
            tracing::debug!(endpoint = %picked.address, error = %e, "TCP tunnel failed");
            return ended(&routed, "-", Some(&picked), 0, 0);
        }
    }
    let limits = port.map(|p| p.tcp_limits).unwrap_or_default();
    let first_len = first.len() as u64;
    match super::tcp_limits::run(stream, upstream, limits, accepted).await {
        Outcome::Finished(Ok((received, sent))) => {
            let received = received + first_len;
            tracing::debug!(endpoint = %picked.address, sent, received, "TCP tunnel finished");
            ended(&routed, "-", Some(&picked), sent, received)
        }
        Outcome::Finished(Err(e)) => {
            tracing::debug!(endpoint = %picked.address, error = %e, "TCP tunnel failed");
            ended(&routed, "-", Some(&picked), 0, 0)
        }
        Outcome::Idle { received, sent } => {
            tracing::debug!(endpoint = %picked.address, sent, received, "TCP tunnel closed: idle timeout");
            ended(&routed, "-", Some(&picked), sent, received + first_len)
        }
        Outcome::Duration { received, sent } => {
            tracing::debug!(endpoint = %picked.address, sent, received, "TCP tunnel closed: longest duration reached");
            // Envoy's response flag for max_downstream_connection_duration.
            ended(&routed, "DT", Some(&picked), sent, received + first_len)
        }
    }
}

/// The connection to the endpoint, or, when the port carries its TCP tunnels through an
/// HTTP proxy at the endpoint (DestinationRule `trafficPolicy.tunnel`), the tunnel the
/// proxy opened on it. The proxy must answer within the port's connect timeout.
async fn through_proxy(
    io: crate::upstream::UpstreamIo,
    port: Option<&filters::model::ServicePort>,
    picked: &balance::Picked,
) -> Result<TunnelIo, filters::ProxyError> {
    let Some(tunnel) = port.and_then(|p| p.tcp_tunnel.as_ref()) else {
        return Ok(TunnelIo::Direct(io));
    };
    let after =
        filters::model::ConnectionLimits::connect_timeout_of(picked.connection_limits.as_ref());
    let open = crate::upstream::http_tunnel::open(io, tunnel, picked.tls.is_some(), picked.address);
    match tokio::time::timeout(after, open).await {
        Ok(opened) => opened,
        Err(_) => Err(filters::ProxyError::UpstreamConnectTimeout {
            endpoint: picked.address.to_string(),
            after,
        }),
    }
}

/// The hash of the tunnel's client IP when the port hashes on it (a source-IP
/// `hash_policy` on its TCP proxy, DestinationRule `consistentHash.useSourceIp`): with
/// ring-hash or Maglev balancing one client then always reaches the same endpoint.
fn source_hash(port: Option<&filters::model::ServicePort>, info: &TunnelInfo) -> Option<u64> {
    use filters::route::model::HashSource;
    let hashes_source = port?
        .hash_policy()
        .iter()
        .any(|p| matches!(p.source, HashSource::SourceIp));
    let ip = info.source_ip.filter(|_| hashes_source)?;
    Some(filters::balance::ring::hash_of(ip.to_string()))
}

/// TLS passthrough through the dynamic forward proxy (istiod's `sni_dynamic_forward_proxy`
/// network filter on a DYNAMIC_DNS entry's TLS port): the ClientHello's SNI names the
/// host, which must fall under the wildcard, resolved through the port's DNS cache and
/// reached at `port`; TLS is not terminated. Returns the bytes read and the endpoint.
async fn by_sni(
    backend: &Backend,
    fp: &filters::forward_proxy::ForwardProxy,
    port: u16,
    stream: &mut H2Stream,
) -> Result<(Vec<u8>, balance::Picked), filters::ProxyError> {
    use filters::ProxyError;
    let (bytes, name) = super::sni::read_client_hello(stream, super::sni::TIMEOUT)
        .await
        .map_err(|e| {
            tracing::info!(error = %e, "forward proxy: no server name to forward to");
            ProxyError::NoRoute(e.to_string())
        })?;
    let Some(name) = name.filter(|n| fp.covers(n)) else {
        tracing::info!(wildcard = ?fp.wildcard, "forward proxy: the ClientHello names no host under the wildcard");
        return Err(ProxyError::NoRoute(format!(
            "SNI not under {}",
            fp.wildcard.as_deref().unwrap_or("the forward proxy")
        )));
    };
    let (address, workload) = crate::upstream::forward_proxy::hosts()
        .address(fp, &name, port)
        .await?;
    let picked = balance::pick_address(backend, address, workload)?;
    Ok((bytes, picked))
}

/// A TCP tunnel being authorized: only connection attributes apply (HTTP-only fields
/// cannot). A matching CUSTOM policy with a gRPC provider is checked with the
/// connection's attributes (Envoy's network ext_authz filter); HTTP providers do not apply
/// to TCP.
struct TunnelSubject {
    ctx: RequestContext,
    client: crate::ext_authz::Client,
}

impl Subject for TunnelSubject {
    /// Why the tunnel is closed.
    type Reply = String;

    fn attributes(&self) -> Attributes<'_> {
        Attributes::of_tunnel(&self.ctx.tunnel)
    }

    async fn check_custom(
        &mut self,
        provider: &Provider,
        policies: &[String],
    ) -> Result<CustomOutcome<String>, CheckError> {
        let check = CheckRequest::of_tunnel(&self.ctx);
        match ext::check_with_timeout(&self.client, provider, &self.ctx, check).await? {
            CheckOutcome::Allow(_) => Ok(CustomOutcome::Allowed),
            CheckOutcome::Deny(_) => Ok(CustomOutcome::Denied(format!(
                "ext_authz provider {} ({})",
                provider.name,
                policies.join(",")
            ))),
        }
    }

    fn check_failed(&self, _provider: &Provider, error: CheckError) -> String {
        error.to_string()
    }
}

/// Authorizes a TCP tunnel: `Err` with the policy or reason that closed it.
async fn authorize(proxy: &Arc<Proxy>, info: &Arc<TunnelInfo>) -> Result<(), String> {
    let snapshot = proxy.config.current();
    let mut subject = TunnelSubject {
        ctx: RequestContext {
            snapshot: snapshot.clone(),
            tunnel: info.clone(),
            log: None,
            decision: None,
        },
        client: crate::ext_authz::Client::new(proxy.clone()),
    };
    match authz::authorize(snapshot.authz(), &info.target, &mut subject).await {
        Ok(()) => Ok(()),
        Err(Denied::Policy(why) | Denied::Custom(why)) => Err(why),
    }
}
