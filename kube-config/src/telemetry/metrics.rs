//! Telemetry `metrics`: overrides of Istio's standard metrics for the Prometheus provider.

use std::collections::BTreeMap;

use filters::model::telemetry::MetricOverride;
use serde::Deserialize;

use super::{invalid, ProviderRef};
use crate::LocalConfigError;

/// `Telemetry.spec.metrics[]`.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct MetricsSpec {
    #[serde(default)]
    providers: Vec<ProviderRef>,
    #[serde(default)]
    overrides: Vec<MetricsOverride>,
    #[serde(default)]
    reporting_interval: Option<String>,
}

/// `Telemetry.spec.metrics[].overrides[]`.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MetricsOverride {
    #[serde(default, rename = "match")]
    selector: Option<MetricSelector>,
    #[serde(default)]
    disabled: Option<bool>,
    #[serde(default)]
    tag_overrides: BTreeMap<String, TagOverride>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MetricSelector {
    #[serde(default)]
    metric: Option<String>,
    #[serde(default)]
    custom_metric: Option<String>,
    #[serde(default)]
    mode: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TagOverride {
    #[serde(default)]
    operation: Option<String>,
    /// Accepted for the shape; `REMOVE` ignores it and `UPSERT` is refused.
    #[serde(default)]
    #[allow(dead_code)]
    value: Option<String>,
}

/// Istio's Prometheus name (without `istio_`) of a Telemetry API metric; `None` for
/// `ALL_METRICS`.
fn metric_name(metric: &str) -> Option<Option<&'static str>> {
    Some(Some(match metric {
        "ALL_METRICS" => return Some(None),
        "REQUEST_COUNT" => "requests_total",
        "REQUEST_DURATION" => "request_duration_milliseconds",
        "REQUEST_SIZE" => "request_bytes",
        "RESPONSE_SIZE" => "response_bytes",
        "TCP_OPENED_CONNECTIONS" => "tcp_connections_opened_total",
        "TCP_CLOSED_CONNECTIONS" => "tcp_connections_closed_total",
        "TCP_SENT_BYTES" => "tcp_sent_bytes_total",
        "TCP_RECEIVED_BYTES" => "tcp_received_bytes_total",
        "GRPC_REQUEST_MESSAGES" => "request_messages_total",
        "GRPC_RESPONSE_MESSAGES" => "response_messages_total",
        _ => return None,
    }))
}

/// `metrics.overrides` for the Prometheus provider, as istiod turns them into the stats
/// filter's overrides: a disabled metric is dropped, `REMOVE` tag overrides remove labels.
/// Tag values (CEL expressions) and custom metrics are refused by field; overrides for the
/// `CLIENT` side only do not apply to a waypoint, which reports as the server.
pub(super) fn metric_overrides(
    spec: Option<(&str, &Vec<MetricsSpec>)>,
) -> Result<Vec<MetricOverride>, LocalConfigError> {
    let Some((label, specs)) = spec else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (i, m) in specs.iter().enumerate() {
        let prometheus =
            m.providers.is_empty() || m.providers.iter().any(|p| p.name == "prometheus");
        if !prometheus {
            continue;
        }
        if m.reporting_interval.is_some() {
            return Err(invalid(
                label,
                format!("spec.metrics[{i}].reportingInterval"),
                "not supported: TCP byte counters are reported when the connection closes",
            ));
        }
        for (j, o) in m.overrides.iter().enumerate() {
            let at = |f: &str| format!("spec.metrics[{i}].overrides[{j}]{f}");
            let selector = o.selector.as_ref();
            if selector.and_then(|s| s.custom_metric.as_ref()).is_some() {
                return Err(invalid(
                    label,
                    at(".match.customMetric"),
                    "custom metrics are not supported",
                ));
            }
            if selector.and_then(|s| s.mode.as_deref()) == Some("CLIENT") {
                continue;
            }
            let metric = selector
                .and_then(|s| s.metric.as_deref())
                .unwrap_or("ALL_METRICS");
            let metric = metric_name(metric).ok_or_else(|| {
                invalid(
                    label,
                    at(".match.metric"),
                    format!("unknown metric {metric:?}"),
                )
            })?;
            let mut tags_to_remove = Vec::new();
            for (tag, t) in &o.tag_overrides {
                match t.operation.as_deref().unwrap_or("UPSERT") {
                    "REMOVE" => tags_to_remove.push(tag.clone()),
                    _ => {
                        return Err(invalid(
                            label,
                            at(&format!(".tagOverrides.{tag}")),
                            "tag values (CEL expressions) are not supported; REMOVE is",
                        ))
                    }
                }
            }
            out.push(MetricOverride {
                metric: metric.map(str::to_string),
                tags_to_remove,
                drop: o.disabled.unwrap_or(false),
            });
        }
    }
    Ok(out)
}
