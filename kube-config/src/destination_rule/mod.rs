//! DestinationRule (`networking.istio.io/v1`): the traffic policy of a Service's traffic
//! through the waypoint, as istiod applies it to the waypoint's clusters and routes. The
//! load balancer (`simple`, `consistentHash`), at the rule level and per port, is applied.
//! The connection pool's request limits become the port's circuit breaker, and
//! `outlierDetection` ejects failing endpoints, `tls` originates TLS inside the tunnel, and
//! `proxyProtocol` sends a PROXY protocol header first on each upstream connection, and
//! `tunnel` carries the Service's TCP ports through an HTTP proxy at the endpoint.
//! Subsets are accepted: only a route that names a subset uses one, and HTTPRoute cannot.
//! `tls.credentialName` names a Secret of the configuration in the rule's namespace
//! ([`crate::secret`]). Every other traffic-policy field the waypoint does not implement
//! yet (locality settings, the pool's timeouts) is an error naming it, never
//! silently ignored.

use std::time::Duration;

use filters::balance::outlier::OutlierPolicy;
use filters::balance::slow_start::SlowStart;
use filters::balance::{
    ring::{RingSize, DEFAULT_RING_SIZE, MAX_RING_SIZE},
    Policy,
};
use filters::model::{ConnectionLimits, ProxyProtocolVersion, UpstreamTls};
use filters::retry::limit::RetryLimit;
use filters::route::model::{HashPolicy, HashSource};
use http::HeaderName;
use serde::Deserialize;

mod outlier;
mod pool;
mod tls;
mod tunnel;

use outlier::OutlierDetection;
use pool::ConnectionPool;
use tls::ClientTls;
pub(crate) use tls::Credentials;
use tunnel::Tunnel;

use super::objects::ObjectMeta;
use super::LocalConfigError;

/// A DestinationRule object.
#[derive(Debug, Deserialize)]
pub struct DestinationRule {
    pub(crate) metadata: ObjectMeta,
    #[serde(default)]
    pub(crate) spec: Spec,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Spec {
    #[serde(default)]
    host: String,
    #[serde(default)]
    traffic_policy: Option<TrafficPolicy>,
    /// Accepted: only a route that names a subset uses one, and HTTPRoute cannot.
    #[serde(default)]
    #[allow(dead_code)]
    subsets: Vec<serde_yaml::Value>,
    /// Accepted, not applied: the waypoint applies the rule for the Service it serves.
    #[serde(default)]
    #[allow(dead_code)]
    export_to: Vec<String>,
    #[serde(default)]
    workload_selector: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TrafficPolicy {
    #[serde(default)]
    load_balancer: Option<LoadBalancer>,
    #[serde(default)]
    port_level_settings: Vec<PortTrafficPolicy>,
    #[serde(default)]
    connection_pool: Option<ConnectionPool>,
    #[serde(default)]
    outlier_detection: Option<OutlierDetection>,
    #[serde(default)]
    tls: Option<ClientTls>,
    #[serde(default)]
    proxy_protocol: Option<ProxyProtocol>,
    #[serde(default)]
    tunnel: Option<Tunnel>,
    #[serde(default)]
    retry_budget: Option<RetryBudget>,
}

/// `proxyProtocol`: the PROXY protocol header sent first on each upstream connection
/// (`version` V1, the default, or V2).
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProxyProtocol {
    #[serde(default)]
    version: Option<String>,
}

impl ProxyProtocol {
    fn version(&self, label: &str) -> Result<ProxyProtocolVersion, LocalConfigError> {
        match self.version.as_deref() {
            None | Some("V1") => Ok(ProxyProtocolVersion::V1),
            Some("V2") => Ok(ProxyProtocolVersion::V2),
            Some(other) => Err(invalid(
                label,
                "spec.trafficPolicy.proxyProtocol.version",
                format!("{other:?} is not a PROXY protocol version (V1, V2)"),
            )),
        }
    }
}

/// `retryBudget`: retries in flight as a share of requests in flight (istiod's
/// `applyRetryBudget`: 20% and at least 3 unless set).
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RetryBudget {
    #[serde(default)]
    percent: Option<f64>,
    #[serde(default)]
    min_retry_concurrency: Option<u32>,
    #[serde(default)]
    budget_interval: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PortTrafficPolicy {
    #[serde(default)]
    port: Option<PortSelector>,
    #[serde(default)]
    load_balancer: Option<LoadBalancer>,
    #[serde(default)]
    connection_pool: Option<ConnectionPool>,
    #[serde(default)]
    outlier_detection: Option<OutlierDetection>,
    #[serde(default)]
    tls: Option<ClientTls>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PortSelector {
    number: u16,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LoadBalancer {
    #[serde(default)]
    simple: Option<String>,
    #[serde(default)]
    consistent_hash: Option<ConsistentHash>,
    #[serde(default)]
    locality_lb_setting: Option<serde_yaml::Value>,
    #[serde(default)]
    warmup_duration_secs: Option<String>,
    #[serde(default)]
    warmup: Option<Warmup>,
}

/// `loadBalancer.warmup`: slow start of new endpoints.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Warmup {
    duration: String,
    #[serde(default)]
    minimum_percent: Option<f64>,
    #[serde(default)]
    aggression: Option<f64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConsistentHash {
    #[serde(default)]
    http_header_name: Option<String>,
    #[serde(default)]
    http_cookie: Option<HttpCookie>,
    #[serde(default)]
    use_source_ip: Option<bool>,
    #[serde(default)]
    http_query_parameter_name: Option<String>,
    #[serde(default)]
    ring_hash: Option<RingHash>,
    #[serde(default)]
    maglev: Option<Maglev>,
    #[serde(default)]
    minimum_ring_size: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HttpCookie {
    name: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    ttl: Option<String>,
    #[serde(default)]
    attributes: Vec<CookieAttribute>,
}

/// `httpCookie.attributes[]`: an attribute of a generated cookie.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CookieAttribute {
    #[serde(default)]
    name: String,
    #[serde(default)]
    value: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RingHash {
    #[serde(default)]
    minimum_ring_size: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Maglev {
    #[serde(default)]
    table_size: Option<u64>,
}

/// How a Service port's endpoints are chosen under a DestinationRule.
#[derive(Debug, Clone, Default)]
pub struct PortPolicy {
    /// The balancer.
    pub balancing: Policy,
    /// The request's hash inputs (consistent hashing).
    pub hash: Vec<HashPolicy>,
    /// Most requests in flight (the connection pool's limits).
    pub max_requests: Option<usize>,
    /// Most HTTP/2 connections (`tcp.maxConnections`) and requests waiting for a stream
    /// past them (`http.http1MaxPendingRequests`), as istiod writes them into the
    /// cluster's circuit breaker.
    pub connection_cap: Option<(usize, Option<usize>)>,
    /// Outlier detection.
    pub outlier: Option<OutlierPolicy>,
    /// TLS originated to the endpoints.
    pub tls: Option<UpstreamTls>,
    /// The limit on retries in flight (`maxRetries`, `retryBudget`).
    pub retry_limit: Option<RetryLimit>,
    /// Idle timeout, requests and lifetime per upstream connection.
    pub connection_limits: Option<ConnectionLimits>,
    /// The PROXY protocol header sent first on each upstream connection.
    pub proxy_protocol: Option<ProxyProtocolVersion>,
    /// Idle timeout and longest duration of the port's TCP tunnels.
    pub tcp_limits: filters::model::TcpLimits,
    /// The HTTP proxy at the endpoint the port's TCP tunnels are carried through.
    pub tcp_tunnel: Option<filters::model::TcpTunnel>,
    /// Slow start of new endpoints (`warmup`, `warmupDurationSecs`).
    pub slow_start: Option<SlowStart>,
}

/// Where a DestinationRule sets `tls` for a port (a BackendTLSPolicy fills what it leaves
/// unset, [`crate::backend_tls`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsLevel {
    /// Neither for the port nor for the whole rule.
    Unset,
    /// At the top of `trafficPolicy`.
    Rule,
    /// In the port's `portLevelSettings` entry.
    Port,
}

impl DestinationRule {
    /// Where this rule sets `tls` for Service port `port`.
    pub fn tls_level(&self, port: u16) -> TlsLevel {
        let Some(tp) = &self.spec.traffic_policy else {
            return TlsLevel::Unset;
        };
        match setting(tp, port, "tls", |p| p.tls.as_ref(), |t| t.tls.as_ref()) {
            None => TlsLevel::Unset,
            Some((_, at)) if at.contains("portLevelSettings") => TlsLevel::Port,
            Some(_) => TlsLevel::Rule,
        }
    }

    /// Whether this rule is for the Service `hostname` (`host` short, resolved in the
    /// rule's namespace, or `name.namespace`, or the FQDN).
    pub fn is_for(&self, hostname: &str, suffix: &str) -> bool {
        let host = self.spec.host.as_str();
        if host == hostname {
            // A ServiceEntry host, named as it is.
            return true;
        }
        let own_ns = self.metadata.namespace.as_deref().unwrap_or("default");
        let fqdn = if host.contains('.') {
            if host.ends_with(suffix) {
                host.to_string()
            } else {
                format!("{host}.svc.{suffix}")
            }
        } else {
            format!("{host}.{own_ns}.svc.{suffix}")
        };
        fqdn == hostname
    }

    /// The policy for Service port `port` (HTTP/2 when `h2`): the port-level load balancer
    /// and connection pool when set for it, else the rule's. `label` names the object in
    /// errors; `tls.credentialName` is looked up among `secrets`.
    pub(crate) fn port_policy(
        &self,
        port: u16,
        h2: bool,
        label: &str,
        secrets: &[(String, crate::secret::Secret)],
    ) -> Result<PortPolicy, LocalConfigError> {
        if self.spec.workload_selector.is_some() {
            return Err(invalid(
                label,
                "spec.workloadSelector",
                "not supported: a waypoint applies rules by host",
            ));
        }
        let Some(tp) = &self.spec.traffic_policy else {
            return Ok(PortPolicy::default());
        };
        let chosen = setting(
            tp,
            port,
            "loadBalancer",
            |p| p.load_balancer.as_ref(),
            |t| t.load_balancer.as_ref(),
        );
        let mut policy = match chosen {
            None => PortPolicy::default(),
            Some((lb, at)) => load_balancer(lb, label, &at)?,
        };
        let pool = setting(
            tp,
            port,
            "connectionPool",
            |p| p.connection_pool.as_ref(),
            |t| t.connection_pool.as_ref(),
        );
        if let Some((pool, at)) = pool {
            policy.retry_limit = pool
                .http
                .as_ref()
                .and_then(|h| h.max_retries)
                .filter(|n| *n > 0)
                .map(|n| RetryLimit::Max(n as usize));
            policy.max_requests = pool.max_requests(h2, label, &at)?;
            policy.connection_cap = pool.connection_cap();
            policy.connection_limits = Some(pool.connection_limits(h2, label, &at)?);
            policy.tcp_limits = pool.tcp_limits(label, &at)?;
        }
        if let Some(b) = &tp.retry_budget {
            if b.budget_interval.is_some() {
                return Err(invalid(
                    label,
                    "spec.trafficPolicy.retryBudget.budgetInterval",
                    "not supported: the budget counts the requests in flight",
                ));
            }
            policy.retry_limit = Some(RetryLimit::Budget {
                percent: b.percent.unwrap_or(20.0).clamp(0.0, 100.0),
                min_concurrency: b.min_retry_concurrency.filter(|n| *n > 0).unwrap_or(3) as usize,
            });
        }
        let outlier = setting(
            tp,
            port,
            "outlierDetection",
            |p| p.outlier_detection.as_ref(),
            |t| t.outlier_detection.as_ref(),
        );
        if let Some((o, at)) = outlier {
            policy.outlier = Some(o.policy(label, &at)?);
        }
        if let Some((t, at)) = setting(tp, port, "tls", |p| p.tls.as_ref(), |t| t.tls.as_ref()) {
            let credentials = Credentials {
                namespace: self.metadata.namespace.as_deref().unwrap_or("default"),
                secrets,
            };
            policy.tls = t.settings(h2, label, &at, credentials)?;
        }
        if let Some(p) = &tp.proxy_protocol {
            policy.proxy_protocol = Some(p.version(label)?);
        }
        if let Some(t) = &tp.tunnel {
            if tp.proxy_protocol.is_some() {
                return Err(invalid(
                    label,
                    "spec.trafficPolicy.tunnel",
                    "tunnel and proxyProtocol must not be set together",
                ));
            }
            // Only the port's TCP tunnels use it, as istiod writes it on TCP chains only.
            policy.tcp_tunnel = Some(t.settings(label)?);
        }
        Ok(policy)
    }
}

/// A traffic-policy setting for Service port `port`, with its field path: the port-level
/// one when `portLevelSettings` has it for the port, else the rule's.
fn setting<'a, T>(
    tp: &'a TrafficPolicy,
    port: u16,
    field: &str,
    port_level: impl Fn(&'a PortTrafficPolicy) -> Option<&'a T>,
    rule_level: impl Fn(&'a TrafficPolicy) -> Option<&'a T>,
) -> Option<(&'a T, String)> {
    let at_port = tp
        .port_level_settings
        .iter()
        .enumerate()
        .find(|(_, p)| p.port.as_ref().is_some_and(|s| s.number == port))
        .and_then(|(i, p)| {
            port_level(p).map(|v| {
                (
                    v,
                    format!("spec.trafficPolicy.portLevelSettings[{i}].{field}"),
                )
            })
        });
    at_port.or_else(|| rule_level(tp).map(|v| (v, format!("spec.trafficPolicy.{field}"))))
}

fn unsupported(label: &str, at: &str, fields: &[(&str, bool)]) -> Result<(), LocalConfigError> {
    match fields.iter().find(|(_, set)| *set) {
        Some((field, _)) => Err(invalid(
            label,
            format!("{at}.{field}"),
            "not supported by the waypoint yet",
        )),
        None => Ok(()),
    }
}

fn invalid(label: &str, field: impl Into<String>, message: impl Into<String>) -> LocalConfigError {
    LocalConfigError::Invalid {
        object: label.to_string(),
        field: field.into(),
        message: message.into(),
    }
}

fn load_balancer(lb: &LoadBalancer, label: &str, at: &str) -> Result<PortPolicy, LocalConfigError> {
    unsupported(
        label,
        at,
        &[("localityLbSetting", lb.locality_lb_setting.is_some())],
    )?;
    let slow_start = warmup(lb, label, at)?;
    if let Some(ch) = &lb.consistent_hash {
        if slow_start.is_some() {
            return Err(invalid(
                label,
                format!("{at}.warmup"),
                "slow start applies to ROUND_ROBIN and LEAST_REQUEST, not consistentHash",
            ));
        }
        return consistent_hash(ch, label, &format!("{at}.consistentHash"));
    }
    let balancing = match lb.simple.as_deref() {
        None | Some("UNSPECIFIED") | Some("LEAST_REQUEST") | Some("LEAST_CONN") => {
            Policy::LeastRequest
        }
        Some("ROUND_ROBIN") => Policy::RoundRobin,
        Some("RANDOM") if slow_start.is_some() => {
            return Err(invalid(
                label,
                format!("{at}.warmup"),
                "slow start applies to ROUND_ROBIN and LEAST_REQUEST, not RANDOM",
            ))
        }
        Some("RANDOM") => Policy::Random,
        Some(other) => {
            return Err(invalid(
                label,
                format!("{at}.simple"),
                format!("{other:?} is not supported (ROUND_ROBIN, LEAST_REQUEST, RANDOM)"),
            ))
        }
    };
    Ok(PortPolicy {
        balancing,
        hash: Vec::new(),
        max_requests: None,
        connection_cap: None,
        outlier: None,
        tls: None,
        retry_limit: None,
        connection_limits: None,
        proxy_protocol: None,
        tcp_limits: Default::default(),
        tcp_tunnel: None,
        slow_start,
    })
}

/// `warmup` (or the older `warmupDurationSecs`) as slow start, with istiod's defaults:
/// 10% least weight, aggression 1.
fn warmup(lb: &LoadBalancer, label: &str, at: &str) -> Result<Option<SlowStart>, LocalConfigError> {
    let (duration, min, aggression, field) = match (&lb.warmup, &lb.warmup_duration_secs) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                label,
                format!("{at}.warmup"),
                "set warmup or warmupDurationSecs, not both",
            ))
        }
        (Some(w), None) => (
            &w.duration,
            w.minimum_percent,
            w.aggression,
            "warmup.duration",
        ),
        (None, Some(d)) => (d, None, None, "warmupDurationSecs"),
        (None, None) => return Ok(None),
    };
    let window = filters::duration::parse(duration)
        .map_err(|e| invalid(label, format!("{at}.{field}"), e.to_string()))?;
    if window.is_zero() {
        return Err(invalid(
            label,
            format!("{at}.{field}"),
            "must be more than 0",
        ));
    }
    let min = min.unwrap_or(10.0);
    if !(0.0..=100.0).contains(&min) {
        return Err(invalid(
            label,
            format!("{at}.warmup.minimumPercent"),
            "must be between 0 and 100",
        ));
    }
    let aggression = aggression.unwrap_or(1.0);
    if !(aggression > 0.0 && aggression.is_finite()) {
        return Err(invalid(
            label,
            format!("{at}.warmup.aggression"),
            "must be greater than 0",
        ));
    }
    Ok(Some(SlowStart {
        window,
        aggression,
        min_weight: min / 100.0,
    }))
}

/// A cookie's attributes, refused as istiod's validation refuses them (a missing or
/// repeated name) and where they cannot be written in a `Set-Cookie` header.
fn cookie_attributes(
    c: &HttpCookie,
    label: &str,
    at: &str,
) -> Result<Vec<(String, String)>, LocalConfigError> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(c.attributes.len());
    for (i, a) in c.attributes.iter().enumerate() {
        let field = format!("{at}.httpCookie.attributes[{i}]");
        filters::route::model::check_cookie_attribute(&a.name, &a.value)
            .map_err(|reason| invalid(label, field.clone(), reason))?;
        if out.iter().any(|(n, _)| *n == a.name) {
            return Err(invalid(
                label,
                format!("{field}.name"),
                format!("duplicate attribute {:?}", a.name),
            ));
        }
        out.push((a.name.clone(), a.value.clone()));
    }
    Ok(out)
}

fn consistent_hash(
    ch: &ConsistentHash,
    label: &str,
    at: &str,
) -> Result<PortPolicy, LocalConfigError> {
    let source =
        match (
            &ch.http_header_name,
            &ch.http_cookie,
            ch.use_source_ip,
            &ch.http_query_parameter_name,
        ) {
            (Some(h), None, None, None) => {
                HashSource::Header(HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                    invalid(label, format!("{at}.httpHeaderName"), "not a header name")
                })?)
            }
            (None, Some(c), None, None) => HashSource::Cookie {
                attributes: cookie_attributes(c, label, at)?,
                name: c.name.clone(),
                ttl: match &c.ttl {
                    None => None,
                    Some(t) => Some(filters::duration::parse(t).map_err(|e| {
                        invalid(label, format!("{at}.httpCookie.ttl"), e.to_string())
                    })?)
                    .filter(|d: &Duration| !d.is_zero()),
                },
                path: c.path.clone().filter(|p| !p.is_empty()),
            },
            (None, None, Some(true), None) => HashSource::SourceIp,
            (None, None, None, Some(q)) => HashSource::QueryParameter(q.clone()),
            _ => return Err(invalid(
                label,
                at,
                "exactly one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName",
            )),
        };
    let balancing = match (&ch.ring_hash, &ch.maglev) {
        (Some(_), Some(_)) => {
            return Err(invalid(label, at, "at most one of ringHash and maglev"));
        }
        (None, Some(m)) => {
            use filters::balance::maglev::{is_prime, DEFAULT_TABLE_SIZE, MAX_TABLE_SIZE};
            let size = m
                .table_size
                .filter(|n| *n != 0)
                .unwrap_or(DEFAULT_TABLE_SIZE);
            if size > MAX_TABLE_SIZE || !is_prime(size) {
                return Err(invalid(
                    label,
                    format!("{at}.maglev.tableSize"),
                    format!("{size} is not a prime number up to {MAX_TABLE_SIZE}"),
                ));
            }
            Policy::Maglev(size)
        }
        (ring, None) => {
            // istiod: `ringHash.minimumRingSize`, else the deprecated `minimumRingSize`
            // (0 is unset), else Envoy's 1024.
            let min = ring
                .as_ref()
                .and_then(|r| r.minimum_ring_size)
                .or(ch.minimum_ring_size)
                .filter(|n| *n != 0)
                .map_or(DEFAULT_RING_SIZE, |n| n as usize);
            if min > MAX_RING_SIZE {
                let field = match ring {
                    Some(_) => "ringHash.minimumRingSize",
                    None => "minimumRingSize",
                };
                return Err(invalid(
                    label,
                    format!("{at}.{field}"),
                    format!("must be at most {MAX_RING_SIZE}"),
                ));
            }
            Policy::RingHash(RingSize {
                min,
                max: MAX_RING_SIZE,
            })
        }
    };
    Ok(PortPolicy {
        balancing,
        hash: vec![HashPolicy {
            source,
            terminal: false,
        }],
        max_requests: None,
        connection_cap: None,
        outlier: None,
        tls: None,
        retry_limit: None,
        connection_limits: None,
        proxy_protocol: None,
        tcp_limits: Default::default(),
        tcp_tunnel: None,
        slow_start: None,
    })
}

#[cfg(test)]
mod credential_tests;
