//! DestinationRule `connectionPool`: the circuit breaker's request limits, the retry cap
//! and the limits on each upstream connection.

use std::time::Duration;

use filters::model::{ConnectionLimits, TcpLimits};
use serde::Deserialize;

use super::{invalid, unsupported};
use crate::LocalConfigError;

/// `connectionPool`: the limits that become the port's circuit breaker.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ConnectionPool {
    #[serde(default)]
    pub(super) tcp: Option<TcpPool>,
    #[serde(default)]
    pub(super) http: Option<HttpPool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct TcpPool {
    #[serde(default)]
    pub(super) max_connections: Option<u32>,
    #[serde(default)]
    pub(super) connect_timeout: Option<String>,
    #[serde(default)]
    pub(super) tcp_keepalive: Option<TcpKeepalive>,
    #[serde(default)]
    pub(super) max_connection_duration: Option<String>,
    #[serde(default)]
    pub(super) idle_timeout: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct HttpPool {
    #[serde(default)]
    pub(super) http1_max_pending_requests: Option<u32>,
    #[serde(default)]
    pub(super) http2_max_requests: Option<u32>,
    #[serde(default)]
    pub(super) max_requests_per_connection: Option<u32>,
    #[serde(default)]
    pub(super) max_retries: Option<u32>,
    #[serde(default)]
    pub(super) idle_timeout: Option<String>,
    #[serde(default)]
    pub(super) h2_upgrade_policy: Option<serde_yaml::Value>,
    #[serde(default)]
    pub(super) use_client_protocol: Option<serde_yaml::Value>,
    #[serde(default)]
    pub(super) max_concurrent_streams: Option<u32>,
    #[serde(default)]
    pub(super) http2_keep_alive: Option<Http2KeepAlive>,
}

/// `http.http2KeepAlive`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Http2KeepAlive {
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
}

/// `tcp.tcpKeepalive`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct TcpKeepalive {
    #[serde(default)]
    probes: Option<u32>,
    #[serde(default)]
    time: Option<String>,
    #[serde(default)]
    interval: Option<String>,
}

impl ConnectionPool {
    /// Connect timeout (`tcp.connectTimeout`), idle timeout (`http.idleTimeout`, else
    /// `tcp.idleTimeout`), requests per connection,
    /// connection lifetime and TCP keepalive, and for an HTTP/2 port (`h2`) the streams per
    /// connection and the PING keepalive, as istiod's `applyConnectionPool` writes them
    /// (it writes the HTTP/2 settings only into a cluster that is HTTP/2 by then: for other
    /// ports they have no effect, here as there).
    pub(super) fn connection_limits(
        &self,
        h2: bool,
        label: &str,
        at: &str,
    ) -> Result<ConnectionLimits, LocalConfigError> {
        let duration =
            |v: Option<&String>, field: &str| -> Result<Option<Duration>, LocalConfigError> {
                v.map(|t| {
                    filters::duration::parse(t)
                        .map_err(|e| invalid(label, format!("{at}.{field}"), e.to_string()))
                })
                .transpose()
                .map(|d| d.filter(|d| !d.is_zero()))
            };
        let http = self.http.as_ref();
        let tcp = self.tcp.as_ref();
        let idle = match http.and_then(|h| h.idle_timeout.as_ref()) {
            Some(t) => duration(Some(t), "http.idleTimeout")?,
            None => duration(tcp.and_then(|t| t.idle_timeout.as_ref()), "tcp.idleTimeout")?,
        };
        let mut h2_keepalive = None;
        if let Some(k) = http
            .and_then(|h| h.http2_keep_alive.as_ref())
            .filter(|_| h2)
        {
            let interval = duration(k.interval.as_ref(), "http.http2KeepAlive.interval")?;
            // Envoy refuses a keepalive without a timeout.
            let timeout =
                duration(k.timeout.as_ref(), "http.http2KeepAlive.timeout")?.ok_or_else(|| {
                    invalid(
                        label,
                        format!("{at}.http.http2KeepAlive.timeout"),
                        "required (Envoy refuses a keepalive without it)",
                    )
                })?;
            h2_keepalive =
                interval.map(|interval| filters::model::H2Keepalive { interval, timeout });
        }
        let tcp_keepalive = match tcp.and_then(|t| t.tcp_keepalive.as_ref()) {
            None => None,
            Some(k) => {
                // istiod writes whole seconds.
                let secs = |v: Option<&String>, field: &str| {
                    duration(v, field).map(|d| d.map(|d| Duration::from_secs(d.as_secs().max(1))))
                };
                Some(filters::model::TcpKeepalive {
                    time: secs(k.time.as_ref(), "tcp.tcpKeepalive.time")?,
                    interval: secs(k.interval.as_ref(), "tcp.tcpKeepalive.interval")?,
                    probes: k.probes.filter(|p| *p > 0),
                })
            }
        };
        let max_concurrent_streams = http.and_then(|h| h.max_concurrent_streams);
        if max_concurrent_streams.is_some_and(|n| n > i32::MAX as u32) {
            return Err(invalid(
                label,
                format!("{at}.http.maxConcurrentStreams"),
                "must fit in an int32",
            ));
        }
        // istiod's `applyConnectionPool` writes it as the cluster's `connect_timeout`;
        // Envoy refuses zero.
        let connect_timeout = match tcp.and_then(|t| t.connect_timeout.as_ref()) {
            None => None,
            Some(t) => Some(duration(Some(t), "tcp.connectTimeout")?.ok_or_else(|| {
                invalid(
                    label,
                    format!("{at}.tcp.connectTimeout"),
                    "must be greater than zero",
                )
            })?),
        };
        Ok(ConnectionLimits {
            connect_timeout,
            idle_timeout: idle,
            max_requests: http
                .and_then(|h| h.max_requests_per_connection)
                .filter(|n| *n > 0),
            max_duration: duration(
                tcp.and_then(|t| t.max_connection_duration.as_ref()),
                "tcp.maxConnectionDuration",
            )?,
            max_concurrent_streams: max_concurrent_streams.filter(|n| h2 && *n > 0),
            h2_keepalive,
            tcp_keepalive,
            preserve_header_case: false,
        })
    }

    /// The time limits of the port's TCP tunnels, as istiod writes `tcp.idleTimeout` and
    /// `tcp.maxConnectionDuration` into a TCP port's `tcp_proxy` (`idle_timeout`,
    /// `max_downstream_connection_duration`; `buildWaypointNetworkFilters` in
    /// listener_waypoint.go). Zero is no limit.
    pub(super) fn tcp_limits(&self, label: &str, at: &str) -> Result<TcpLimits, LocalConfigError> {
        let tcp = self.tcp.as_ref();
        let duration =
            |v: Option<&String>, field: &str| -> Result<Option<Duration>, LocalConfigError> {
                v.map(|t| {
                    filters::duration::parse(t)
                        .map_err(|e| invalid(label, format!("{at}.tcp.{field}"), e.to_string()))
                })
                .transpose()
                .map(|d| d.filter(|d| !d.is_zero()))
            };
        Ok(TcpLimits {
            idle_timeout: duration(tcp.and_then(|t| t.idle_timeout.as_ref()), "idleTimeout")?,
            max_duration: duration(
                tcp.and_then(|t| t.max_connection_duration.as_ref()),
                "maxConnectionDuration",
            )?,
        })
    }

    /// The cap on HTTP/2 connections (`tcp.maxConnections`) and on the requests waiting
    /// past it (`http.http1MaxPendingRequests`), when the rule sets `maxConnections`.
    pub(super) fn connection_cap(&self) -> Option<(usize, Option<usize>)> {
        let max = self.tcp.as_ref().and_then(|t| t.max_connections)?;
        let pending = self
            .http
            .as_ref()
            .and_then(|h| h.http1_max_pending_requests);
        Some((max as usize, pending.map(|p| p as usize)))
    }

    /// The limit on requests in flight, as istiod writes these fields into the cluster's
    /// circuit breaker and the waypoint reads it back (`http2MaxRequests`; for HTTP/1.1
    /// also `maxConnections` + `http1MaxPendingRequests`). Fields with no such effect here
    /// are refused by name.
    pub(super) fn max_requests(
        &self,
        h2: bool,
        label: &str,
        at: &str,
    ) -> Result<Option<usize>, LocalConfigError> {
        let tcp = self.tcp.as_ref();
        let http = self.http.as_ref();
        unsupported(
            label,
            &format!("{at}.http"),
            &[
                (
                    "h2UpgradePolicy",
                    http.is_some_and(|h| h.h2_upgrade_policy.is_some()),
                ),
                (
                    "useClientProtocol",
                    http.is_some_and(|h| h.use_client_protocol.is_some()),
                ),
            ],
        )?;
        let requests = http.and_then(|h| h.http2_max_requests);
        let connections = tcp.and_then(|t| t.max_connections);
        let pending = http.and_then(|h| h.http1_max_pending_requests);
        let h1 = match (connections, pending) {
            (Some(c), Some(p)) => Some(c.saturating_add(p)),
            _ => None,
        };
        let limit = match (requests, h1) {
            (r, _) if h2 => r,
            (Some(r), Some(h)) => Some(r.min(h)),
            (r, h) => r.or(h),
        };
        Ok(limit.map(|l| l as usize))
    }
}
