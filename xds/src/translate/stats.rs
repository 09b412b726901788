//! `istio.stats`, Istio's standard metrics filter. The waypoint records the same metrics
//! itself (`istio_requests_total` and the rest, reporter `waypoint`) and applies the
//! Telemetry API metric overrides istiod puts in the filter's configuration (istiod's
//! `generateStatsConfig`, `pilot/pkg/model/telemetry.go`): tags to remove, dropped
//! metrics and dimensions (CEL value expressions, compiled here: one outside the supported
//! subset is refused naming it). `match` gates an override's dimensions per request (Envoy's
//! plugin documents and ignores it; istiod never sets it). Custom metric definitions are
//! refused by name.

use envoy_types::pb::google::protobuf::Any;
use filters::cel::Expression;
use filters::model::telemetry::MetricOverride;

use super::Bad;

/// The stats plugin's configuration type.
const PLUGIN_CONFIG: &str = "stats.PluginConfig";

/// The metric overrides of the `istio.stats` filter configuration at `at`.
pub fn convert(any: Option<&Any>, at: &str) -> Result<Vec<MetricOverride>, Bad> {
    let Some(any) = any else {
        return Ok(Vec::new());
    };
    let bad = |field: &str, why: String| Err((format!("{at}.typed_config{field}"), why));
    let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
    let json = match crate::envoy::encoded_to_json(type_name, &any.value) {
        Ok(j) => j,
        Err(e) => return bad("", format!("cannot read {}: {e}", any.type_url)),
    };
    let config = match type_name {
        PLUGIN_CONFIG => &json,
        "udpa.type.v1.TypedStruct" | "xds.type.v3.TypedStruct" => {
            let inner = json["type_url"]
                .as_str()
                .or_else(|| json["typeUrl"].as_str())
                .unwrap_or_default();
            if !inner.ends_with(PLUGIN_CONFIG) {
                return bad(
                    ".type_url",
                    format!("expected {PLUGIN_CONFIG}, got {inner:?}"),
                );
            }
            &json["value"]
        }
        other => return bad("", format!("expected {PLUGIN_CONFIG}, got {other}")),
    };
    if config["definitions"]
        .as_array()
        .is_some_and(|a| !a.is_empty())
    {
        return bad(
            ".definitions",
            "custom metric definitions are not supported".into(),
        );
    }
    let mut out = Vec::new();
    for (i, m) in config["metrics"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let field = |f: &str| format!(".metrics[{i}].{f}");
        let mut dimensions = Vec::new();
        if let Some(d) = m["dimensions"].as_object() {
            // In name order, as Envoy's plugin adds them.
            let mut names: Vec<&String> = d.keys().collect();
            names.sort();
            for tag in names {
                if !filters::model::telemetry::valid_label_name(tag) {
                    return bad(
                        &field(&format!("dimensions.{tag}")),
                        "not a valid metric label name".into(),
                    );
                }
                let Some(expr) = d[tag].as_str() else {
                    return bad(&field(&format!("dimensions.{tag}")), "not a string".into());
                };
                let e = Expression::value(expr).map_err(|e| {
                    (
                        format!("{at}.typed_config{}", field(&format!("dimensions.{tag}"))),
                        e.to_string(),
                    )
                })?;
                dimensions.push((tag.clone(), e));
            }
        }
        let drop = m["drop"].as_bool().unwrap_or(false);
        let tags_to_remove: Vec<String> = m["tagsToRemove"]
            .as_array()
            .or_else(|| m["tags_to_remove"].as_array())
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect();
        let when = match m["match"].as_str().filter(|v| !v.is_empty()) {
            None => None,
            Some(expr) => {
                if drop || !tags_to_remove.is_empty() {
                    return bad(
                        &field("match"),
                        "a match gates dimensions per request; with drop or tags_to_remove (which apply to a whole metric) it is not supported".into(),
                    );
                }
                Some(Expression::predicate(expr).map_err(|e| {
                    (
                        format!("{at}.typed_config{}", field("match")),
                        e.to_string(),
                    )
                })?)
            }
        };
        let name = m["name"].as_str().unwrap_or_default();
        out.push(MetricOverride {
            metric: (!name.is_empty()).then(|| name.to_string()),
            tags_to_remove,
            dimensions,
            when,
            drop,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_reflect::DynamicMessage;

    /// A `stats.PluginConfig` as istiod's `generateStatsConfig` writes it.
    fn plugin(metrics: serde_json::Value) -> Any {
        let desc = crate::envoy::pool()
            .get_message_by_name(PLUGIN_CONFIG)
            .unwrap();
        let json = serde_json::json!({"metrics": metrics});
        let msg = DynamicMessage::deserialize(desc, json).unwrap();
        Any {
            type_url: format!("type.googleapis.com/{PLUGIN_CONFIG}"),
            value: prost::Message::encode_to_vec(&msg),
        }
    }

    #[test]
    fn dimensions_and_match_are_compiled_or_refused_by_name() {
        let any = plugin(serde_json::json!([
            {"name": "requests_total", "dimensions": {"user": "request.headers['x-user']", "a": "'x'"},
             "match": "response.code >= 500"}
        ]));
        let out = convert(Some(&any), "f").unwrap();
        let dims: Vec<(&str, &str)> = out[0]
            .dimensions
            .iter()
            .map(|(k, e)| (k.as_str(), e.source()))
            .collect();
        assert_eq!(
            dims,
            vec![("a", "'x'"), ("user", "request.headers['x-user']")]
        );
        assert_eq!(
            out[0].when.as_ref().unwrap().source(),
            "response.code >= 500"
        );
        for (metrics, field) in [
            (
                serde_json::json!([{"dimensions": {"bad-name": "'x'"}}]),
                "metrics[0].dimensions.bad-name",
            ),
            (
                serde_json::json!([{"dimensions": {"t": "request.time"}}]),
                "metrics[0].dimensions.t",
            ),
            (
                serde_json::json!([{"match": "response.code"}]),
                "metrics[0].match",
            ),
            (
                serde_json::json!([{"match": "true", "drop": true}]),
                "metrics[0].match",
            ),
        ] {
            let (at, why) = convert(Some(&plugin(metrics)), "f").unwrap_err();
            assert!(at.ends_with(field), "{at}: {why}");
        }
    }
}
