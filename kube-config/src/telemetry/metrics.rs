//! Telemetry `metrics`: overrides of Istio's standard metrics for the Prometheus provider.

use std::collections::BTreeMap;

use filters::cel::Expression;
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
    /// The CEL expression of an `UPSERT` (the label's value).
    #[serde(default)]
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
/// filter's overrides (`pilot/pkg/model/telemetry.go`, `mergeMetrics`,
/// `generateStatsConfig`): a disabled metric is dropped, `REMOVE` tag overrides remove
/// labels, `UPSERT` ones set a label to a CEL expression's value (compiled here; one
/// outside the supported subset refuses the object naming the tag). Custom metrics are
/// refused by field; overrides for the `CLIENT` side only do not apply to a waypoint, which
/// reports as the server.
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
            let mut dimensions = Vec::new();
            for (tag, t) in &o.tag_overrides {
                let tat = at(&format!(".tagOverrides.{tag}"));
                match t.operation.as_deref().unwrap_or("UPSERT") {
                    "REMOVE" => tags_to_remove.push(tag.clone()),
                    "UPSERT" => {
                        if !filters::model::telemetry::valid_label_name(tag) {
                            return Err(invalid(label, tat, "not a valid metric label name"));
                        }
                        let Some(value) = t.value.as_deref().filter(|v| !v.is_empty()) else {
                            return Err(invalid(
                                label,
                                format!("{tat}.value"),
                                "UPSERT needs a value expression",
                            ));
                        };
                        let expr = Expression::value(value)
                            .map_err(|e| invalid(label, format!("{tat}.value"), e.to_string()))?;
                        dimensions.push((tag.clone(), expr));
                    }
                    other => {
                        return Err(invalid(
                            label,
                            format!("{tat}.operation"),
                            format!("unknown operation {other:?}"),
                        ))
                    }
                }
            }
            out.push(MetricOverride {
                metric: metric.map(str::to_string),
                tags_to_remove,
                dimensions,
                when: None,
                drop: o.disabled.unwrap_or(false),
            });
        }
    }
    Ok(out)
}
