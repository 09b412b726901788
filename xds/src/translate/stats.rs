//! `istio.stats`, Istio's standard metrics filter. The waypoint records the same metrics
//! itself (`istio_requests_total` and the rest, reporter `waypoint`), so the filter's
//! configuration is accepted when it asks for nothing beyond them. Telemetry API metric
//! overrides (`metrics`: dimensions, tags to remove, drop) and custom metric definitions are
//! refused by name until the waypoint implements them: ACKing them would silently ignore
//! them.

use envoy_types::pb::google::protobuf::Any;

use super::route::Bad;

/// The stats plugin's configuration type.
const PLUGIN_CONFIG: &str = "stats.PluginConfig";

/// Checks the `istio.stats` filter configuration at `at`.
pub fn check(any: Option<&Any>, at: &str) -> Result<(), Bad> {
    let Some(any) = any else {
        return Ok(());
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
    for (key, what) in [
        (
            "metrics",
            "metric overrides (Telemetry metrics.overrides: dimensions, tags to remove, drop)",
        ),
        ("definitions", "custom metric definitions"),
    ] {
        if config[key].as_array().is_some_and(|a| !a.is_empty()) {
            return bad(&format!(".{key}"), format!("{what} are not supported"));
        }
    }
    Ok(())
}
