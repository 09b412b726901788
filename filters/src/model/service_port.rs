//! One port of a Service: its endpoints and everything that decides how a request to it
//! is sent (balancing, circuit breaker, outlier detection, locality priorities, retry
//! limit, TLS origination, PROXY protocol, connection limits, HTTP version), with the
//! counters those keep for the life of a snapshot.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde::Serialize;

use super::snapshot::{Endpoint, TargetPort};
use super::Protocol;

/// One port of a Service.
#[derive(Debug, Serialize)]
pub struct ServicePort {
    /// The port name, if any.
    pub name: Option<String>,
    /// The Service port.
    pub port: u16,
    /// The Service `targetPort`.
    pub target_port: TargetPort,
    /// The port's protocol (appProtocol, then name prefix).
    pub protocol: Protocol,
    /// The ready endpoints behind this port.
    pub endpoints: Vec<Endpoint>,
    /// How an endpoint is chosen.
    #[serde(skip)]
    balancing: crate::balance::Balancing,
    /// The policy `balancing` was built for (a host-name upstream builds its table over
    /// the resolved addresses with it).
    #[serde(skip)]
    policy: crate::balance::Policy,
    /// The request's hash inputs for consistent hashing when no route gives them (a
    /// DestinationRule `consistentHash` from the local configuration).
    #[serde(skip)]
    hash_policy: Vec<crate::route::model::HashPolicy>,
    /// Most requests in flight to this port (the cluster's circuit breaker); beyond it,
    /// 503 `UO`.
    #[serde(skip)]
    max_requests: Option<usize>,
    /// Requests in flight to this port, counted when it has a limit.
    #[serde(skip)]
    requests: AtomicUsize,
    /// Requests in flight per endpoint (least-request balancing).
    #[serde(skip)]
    active: Box<[AtomicUsize]>,
    /// Outlier detection over the endpoints, when the port has it.
    #[serde(skip)]
    outlier: Option<crate::balance::outlier::Tracker>,
    /// Slow start of new endpoints, when the port has it.
    #[serde(skip)]
    slow_start: Option<crate::balance::slow_start::State>,
    /// Each endpoint's weight, when they are not all the same.
    #[serde(skip)]
    endpoint_weights: Option<Box<[u32]>>,
    /// The HTTP version requests go upstream in.
    pub upstream_protocol: super::UpstreamProtocol,
    /// The lowest priority of an addressed endpoint, with `priorities`.
    #[serde(skip)]
    lowest_priority: Option<u32>,
    /// Each endpoint's priority (its locality's), when they are not all the same.
    #[serde(skip)]
    priorities: Option<Box<[u32]>>,
    /// Each endpoint's locality and each locality's weight, when localities are chosen by
    /// weight before endpoints.
    #[serde(skip)]
    localities: Option<crate::balance::locality::Localities>,
    /// The limit on retries in flight (circuit breaker `max_retries` or `retry_budget`).
    #[serde(skip)]
    retry_limit: Option<crate::retry::limit::RetryLimit>,
    /// Retries in flight to this port, counted when it has a limit.
    #[serde(skip)]
    retries: AtomicUsize,
    /// TLS originated to the endpoints inside the tunnel (DestinationRule `tls`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Arc<super::UpstreamTls>>,
    /// Limits on upstream HTTP connections (DestinationRule `connectionPool`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_limits: Option<super::ConnectionLimits>,
    /// The cap on the cluster's HTTP/2 connections and the requests waiting past it
    /// (circuit breaker `max_connections`, `max_pending_requests`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_cap: Option<Arc<super::ConnectionCap>>,
    /// The PROXY protocol header sent first on each upstream connection
    /// (DestinationRule `proxyProtocol`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<super::ProxyProtocolVersion>,
    /// Time limits on TCP tunnels to this port (DestinationRule `connectionPool.tcp`
    /// `idleTimeout` and `maxConnectionDuration`).
    #[serde(skip_serializing_if = "super::TcpLimits::is_unset")]
    pub tcp_limits: super::TcpLimits,
    /// An HTTP proxy at the endpoint the port's TCP tunnels are carried through
    /// (DestinationRule `trafficPolicy.tunnel`, the TCP proxy's `tunneling_config`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_tunnel: Option<Arc<super::TcpTunnel>>,
    #[serde(skip)]
    next: AtomicUsize,
    /// The upstream when it is not a list of endpoints (a host name resolved outside the
    /// snapshot, or the host each request names); when set, `endpoints` is empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    unlisted: Option<Unlisted>,
}

/// A port's upstream that is not a list of endpoints: one check on the pick path tells
/// the mesh's ports (always `None`) from these.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unlisted {
    /// A host name resolved outside the snapshot (a DNS ServiceEntry, [`crate::dns`]).
    Dns(Arc<crate::dns::DnsTarget>),
    /// The host each request names (a DYNAMIC_DNS ServiceEntry,
    /// [`crate::forward_proxy`]).
    ForwardProxy(Arc<crate::forward_proxy::ForwardProxy>),
    /// The tunnel's original destination (a ServiceEntry with `resolution: NONE`, a
    /// headless Service; istiod's ORIGINAL_DST cluster).
    OriginalDst(Arc<OriginalDst>),
}

/// A port whose upstream is the address the client connected to: inside an HBONE tunnel,
/// the CONNECT authority (the Service VIP of a `resolution: NONE` ServiceEntry, whose
/// addresses are the real destinations; a pod IP for a headless Service). A destination
/// that is a mesh workload of the snapshot is reached over HBONE, any other over plain
/// TCP.
#[derive(Debug, Serialize)]
pub struct OriginalDst {
    /// The port connected to instead of the original one (istiod's
    /// `upstream_port_override`, a ServiceEntry port's `targetPort`).
    pub port_override: Option<u16>,
    /// The workload a destination outside the mesh stands for.
    #[serde(skip)]
    pub workload: Arc<super::Workload>,
}

impl ServicePort {
    /// Builds a port with its endpoints.
    pub fn new(
        name: Option<String>,
        port: u16,
        target_port: TargetPort,
        protocol: Protocol,
        endpoints: Vec<Endpoint>,
    ) -> Self {
        Self {
            name,
            port,
            target_port,
            protocol,
            active: (0..endpoints.len()).map(|_| AtomicUsize::new(0)).collect(),
            endpoints,
            balancing: crate::balance::Balancing::RoundRobin,
            policy: crate::balance::Policy::RoundRobin,
            hash_policy: Vec::new(),
            max_requests: None,
            requests: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            outlier: None,
            slow_start: None,
            endpoint_weights: None,
            tls: None,
            connection_limits: None,
            connection_cap: None,
            proxy_protocol: None,
            tcp_limits: super::TcpLimits::default(),
            tcp_tunnel: None,
            retry_limit: None,
            retries: AtomicUsize::new(0),
            priorities: None,
            localities: None,
            lowest_priority: None,
            upstream_protocol: super::UpstreamProtocol::for_port(protocol),
            unlisted: None,
        }
    }

    /// Sets the upstream named by a host name ([`crate::dns`]).
    pub fn with_dns(mut self, target: Option<Arc<crate::dns::DnsTarget>>) -> Self {
        if let Some(t) = target {
            self.unlisted = Some(Unlisted::Dns(t));
        }
        self
    }

    /// This port forwarding to the host each request names
    /// ([`crate::forward_proxy`]).
    pub fn with_forward_proxy(
        mut self,
        proxy: Option<Arc<crate::forward_proxy::ForwardProxy>>,
    ) -> Self {
        if let Some(p) = proxy {
            self.unlisted = Some(Unlisted::ForwardProxy(p));
        }
        self
    }

    /// This port sending to the tunnel's original destination ([`OriginalDst`]).
    pub fn with_original_dst(mut self, original: Option<Arc<OriginalDst>>) -> Self {
        if let Some(o) = original {
            self.unlisted = Some(Unlisted::OriginalDst(o));
        }
        self
    }

    /// The original-destination settings, if the port sends there.
    pub fn original_dst(&self) -> Option<&Arc<OriginalDst>> {
        match &self.unlisted {
            Some(Unlisted::OriginalDst(o)) => Some(o),
            _ => None,
        }
    }

    /// The upstream named by a host name, if the port has one.
    pub fn dns(&self) -> Option<&Arc<crate::dns::DnsTarget>> {
        match &self.unlisted {
            Some(Unlisted::Dns(d)) => Some(d),
            _ => None,
        }
    }

    /// The forward proxy, if the port is one.
    pub fn forward_proxy(&self) -> Option<&Arc<crate::forward_proxy::ForwardProxy>> {
        match &self.unlisted {
            Some(Unlisted::ForwardProxy(p)) => Some(p),
            _ => None,
        }
    }

    /// The upstream when it is not a list of endpoints.
    pub fn unlisted(&self) -> Option<&Unlisted> {
        self.unlisted.as_ref()
    }

    /// This port sending requests upstream in `protocol`'s HTTP version.
    pub fn with_upstream_protocol(mut self, protocol: super::UpstreamProtocol) -> Self {
        self.upstream_protocol = protocol;
        self
    }

    /// This port with its endpoints' priorities (in endpoint order). Requests go to the
    /// lowest priority with an endpoint that can take them.
    pub fn with_priorities(mut self, priorities: Vec<u32>) -> Self {
        let mixed = priorities.windows(2).any(|w| w[0] != w[1]);
        if mixed && priorities.len() == self.endpoints.len() {
            self.lowest_priority = (0..self.endpoints.len())
                .filter(|i| self.endpoints[*i].address().is_some())
                .map(|i| priorities[i])
                .min();
            self.priorities = Some(priorities.into_boxed_slice());
        }
        self
    }

    /// This port choosing a locality by weight before an endpoint: `(locality of each
    /// endpoint, weight of each locality)`. `None`: endpoints are chosen directly.
    pub fn with_locality_weights(mut self, weights: Option<(Vec<u32>, Vec<u32>)>) -> Self {
        self.localities = weights
            .filter(|(of, _)| of.len() == self.endpoints.len())
            .map(|(of, w)| crate::balance::locality::Localities::new(of, w));
        self
    }

    /// The localities, when chosen by weight.
    pub fn localities(&self) -> Option<&crate::balance::locality::Localities> {
        self.localities.as_ref()
    }

    /// Each endpoint's priority, when they differ.
    pub fn priorities(&self) -> Option<&[u32]> {
        self.priorities.as_deref()
    }

    /// The lowest priority among the addressed endpoints (computed with the
    /// configuration; ejections can move traffic past it).
    pub fn lowest_priority(&self) -> Option<u32> {
        self.lowest_priority
    }

    /// This port with a limit on retries in flight.
    pub fn with_retry_limit(mut self, limit: Option<crate::retry::limit::RetryLimit>) -> Self {
        self.retry_limit = limit;
        self
    }

    /// The limit on retries in flight, if any.
    pub fn retry_limit(&self) -> Option<crate::retry::limit::RetryLimit> {
        self.retry_limit
    }

    /// Retries in flight (counted when the port has a retry limit).
    pub fn retries(&self) -> &AtomicUsize {
        &self.retries
    }

    /// Whether requests in flight are counted (a circuit breaker or a retry budget needs
    /// them).
    pub fn counts_requests(&self) -> bool {
        self.max_requests.is_some()
            || matches!(
                self.retry_limit,
                Some(crate::retry::limit::RetryLimit::Budget { .. })
            )
    }

    /// This port with limits on its upstream HTTP connections.
    pub fn with_connection_limits(mut self, limits: Option<super::ConnectionLimits>) -> Self {
        self.connection_limits = limits.filter(super::ConnectionLimits::is_set);
        self
    }

    /// This port with a cap on its upstream HTTP/2 connections.
    pub fn with_connection_cap(mut self, cap: Option<super::ConnectionCap>) -> Self {
        self.connection_cap = cap.map(Arc::new);
        self
    }

    /// This port sending a PROXY protocol header first on each upstream connection.
    pub fn with_proxy_protocol(mut self, version: Option<super::ProxyProtocolVersion>) -> Self {
        self.proxy_protocol = version;
        self
    }

    /// This port with time limits on its TCP tunnels.
    pub fn with_tcp_limits(mut self, limits: super::TcpLimits) -> Self {
        self.tcp_limits = limits;
        self
    }

    /// This port carrying its TCP tunnels through an HTTP proxy at the endpoint.
    pub fn with_tcp_tunnel(mut self, tunnel: Option<super::TcpTunnel>) -> Self {
        self.tcp_tunnel = tunnel.map(Arc::new);
        self
    }

    /// This port with TLS originated to its endpoints.
    pub fn with_tls(mut self, tls: Option<super::UpstreamTls>) -> Self {
        self.tls = tls.map(Arc::new);
        self
    }

    /// This port with outlier detection (`None`: without).
    pub fn with_outlier(mut self, policy: Option<crate::balance::outlier::OutlierPolicy>) -> Self {
        self.outlier =
            policy.map(|p| crate::balance::outlier::Tracker::new(p, self.endpoints.len()));
        self
    }

    /// Outlier detection over this port's endpoints, if configured.
    pub fn outlier(&self) -> Option<&crate::balance::outlier::Tracker> {
        self.outlier.as_ref()
    }

    /// Takes over outlier-detection state from the same port of the snapshot this one
    /// replaces, endpoint by endpoint (matched by address).
    pub fn inherit_outlier(&self, previous: &ServicePort) {
        if let (Some(now), Some(before)) = (&self.outlier, &previous.outlier) {
            let addresses: Vec<_> = self.endpoints.iter().map(Endpoint::address).collect();
            let before_addresses: Vec<_> =
                previous.endpoints.iter().map(Endpoint::address).collect();
            now.inherit(&addresses, before, &before_addresses);
        }
        if let (Some(now), Some(before)) = (self.dns(), previous.dns()) {
            now.inherit(before);
        }
    }

    /// This port with slow start for endpoints that join it (`None`: off).
    pub fn with_slow_start(
        mut self,
        config: Option<crate::balance::slow_start::SlowStart>,
    ) -> Self {
        self.slow_start =
            config.map(|c| crate::balance::slow_start::State::new(c, self.endpoints.len()));
        self
    }

    /// This port with its endpoints' weights (in endpoint order; EDS
    /// `load_balancing_weight`); kept only when they differ.
    pub fn with_endpoint_weights(mut self, weights: Vec<u32>) -> Self {
        let differ = weights.windows(2).any(|w| w[0] != w[1]);
        if differ && weights.len() == self.endpoints.len() {
            self.endpoint_weights = Some(weights.into_boxed_slice());
        }
        self
    }

    /// Each endpoint's weight, when they differ.
    pub fn endpoint_weights(&self) -> Option<&[u32]> {
        self.endpoint_weights.as_deref()
    }

    /// Slow start, if the port has it.
    pub fn slow_start(&self) -> Option<&crate::balance::slow_start::State> {
        self.slow_start.as_ref()
    }

    /// Keeps the join time of the endpoints `previous` had (by address), so that a push does
    /// not put every endpoint back into slow start.
    pub fn inherit_slow_start(&self, previous: &ServicePort) {
        if let (Some(now), Some(before)) = (&self.slow_start, &previous.slow_start) {
            let addresses: Vec<_> = self.endpoints.iter().map(Endpoint::address).collect();
            let before_addresses: Vec<_> =
                previous.endpoints.iter().map(Endpoint::address).collect();
            now.inherit(&addresses, before, &before_addresses);
        }
    }

    /// This port balanced by `policy` (round robin unless configured); a consistent-hash
    /// table weighs the endpoints as [`Self::with_endpoint_weights`] set them, so that is
    /// set first.
    pub fn with_balancing(mut self, policy: crate::balance::Policy) -> Self {
        self.policy = policy;
        self.balancing = crate::balance::Balancing::new(
            policy,
            &self.endpoints,
            self.endpoint_weights.as_deref(),
        );
        self
    }

    /// This port with a circuit breaker: at most `max` requests in flight.
    pub fn with_max_requests(mut self, max: Option<usize>) -> Self {
        self.max_requests = max;
        self
    }

    /// The circuit breaker's limit, if any.
    pub fn max_requests(&self) -> Option<usize> {
        self.max_requests
    }

    /// Requests in flight to this port (counted when it has a limit).
    pub fn requests(&self) -> &AtomicUsize {
        &self.requests
    }

    /// This port's own hash inputs (used when the matched route has none).
    pub fn with_hash_policy(mut self, policy: Vec<crate::route::model::HashPolicy>) -> Self {
        self.hash_policy = policy;
        self
    }

    /// The port's own hash inputs.
    pub fn hash_policy(&self) -> &[crate::route::model::HashPolicy] {
        &self.hash_policy
    }

    /// How an endpoint of this port is chosen.
    pub fn balancing(&self) -> &crate::balance::Balancing {
        &self.balancing
    }

    /// The configured load-balancing policy.
    pub fn policy(&self) -> crate::balance::Policy {
        self.policy
    }

    /// Requests in flight to endpoint `i` (counted by least-request balancing).
    pub fn active(&self, i: usize) -> &AtomicUsize {
        &self.active[i]
    }

    /// Round-robin cursor shared by every request on this snapshot.
    pub(crate) fn next_index(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }
}
