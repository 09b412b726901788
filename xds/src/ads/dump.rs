//! The admin `/config_dump` in Envoy's `envoy.admin.v3.ConfigDump` JSON form, from the
//! resources the subscriber accepted (what `istioctl proxy-config` reads).

use serde_json::{json, Value};

use super::client::AdsStats;
use super::types::{CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};

fn timestamp(t: std::time::SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t)
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// The message type of a type URL.
fn message_type(type_url: &str) -> &str {
    type_url.rsplit('/').next().unwrap_or(type_url)
}

/// Listeners, clusters and endpoints as Envoy's admin API dumps them; `secrets` is the
/// already-redacted secrets section, to which the secrets received over ADS (stored
/// redacted, [`redacted_secret`]) are added.
pub fn config_dump(stats: &AdsStats, mut secrets: Value) -> Value {
    let accepted = stats.accepted.lock().unwrap_or_else(|e| e.into_inner());
    let each = |type_url: &str| -> Vec<(String, String, Value, String)> {
        accepted
            .get(type_url)
            .into_iter()
            .flatten()
            .filter_map(|(name, (version, any, when))| {
                let ty = message_type(type_url);
                let mut v = crate::envoy::encoded_to_json(ty, &any.value).ok()?;
                if let Some(o) = v.as_object_mut() {
                    o.insert("@type".into(), json!(format!("type.googleapis.com/{ty}")));
                }
                Some((name.clone(), version.clone(), v, timestamp(*when)))
            })
            .collect()
    };
    let listeners: Vec<Value> = each(LISTENER)
        .into_iter()
        .map(|(name, version, l, at)| json!({"name": name, "active_state": {"version_info": version, "listener": l, "last_updated": at}}))
        .collect();
    let clusters: Vec<Value> = each(CLUSTER)
        .into_iter()
        .map(|(_, version, c, at)| json!({"version_info": version, "cluster": c, "last_updated": at}))
        .collect();
    let endpoints: Vec<Value> = each(ENDPOINT)
        .into_iter()
        .map(|(_, version, e, at)| json!({"version_info": version, "endpoint_config": e, "last_updated": at}))
        .collect();
    let routes: Vec<Value> = each(ROUTE)
        .into_iter()
        .map(|(_, version, r, at)| json!({"version_info": version, "route_config": r, "last_updated": at}))
        .collect();
    if let Some(active) = secrets
        .get_mut("dynamic_active_secrets")
        .and_then(Value::as_array_mut)
    {
        active.extend(each(SECRET).into_iter().map(|(name, version, s, at)| {
            json!({"name": name, "version_info": version, "last_updated": at, "secret": s})
        }));
    }
    json!({"configs": [
        {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "dynamic_listeners": listeners},
        {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "dynamic_active_clusters": clusters},
        {"@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump", "dynamic_endpoint_configs": endpoints},
        {"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump", "dynamic_route_configs": routes},
        secrets,
    ]})
}

/// The secrets section: the certificate chain in full, the private key redacted, as
/// Envoy prints them.
pub fn secrets_dump(chain_pem: &str, roots_pem: &str) -> Value {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    json!({
        "@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
        "dynamic_active_secrets": [
            {"name": "default", "secret": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret", "name": "default",
              "tls_certificate": {"certificate_chain": {"inline_bytes": b64(chain_pem)}, "private_key": {"inline_bytes": b64("[redacted]")}}}},
            {"name": "ROOTCA", "secret": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret", "name": "ROOTCA",
              "validation_context": {"trusted_ca": {"inline_bytes": b64(roots_pem)}}}}
        ]
    })
}

/// A secret from ADS as it is kept for the dump: a client certificate's private key
/// replaced by `[redacted]`, as Envoy prints it; anything else unchanged.
pub fn redacted_secret(
    any: &envoy_types::pb::google::protobuf::Any,
) -> envoy_types::pb::google::protobuf::Any {
    use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
    use prost::Message;
    let Ok(mut s) = Secret::decode(any.value.as_slice()) else {
        return any.clone();
    };
    if let Some(secret::Type::TlsCertificate(t)) = &mut s.r#type {
        if t.private_key.is_some() {
            t.private_key = Some(DataSource {
                specifier: Some(Specifier::InlineBytes(b"[redacted]".to_vec())),
                ..Default::default()
            });
        }
    }
    envoy_types::pb::google::protobuf::Any {
        type_url: any.type_url.clone(),
        value: s.encode_to_vec(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_are_rfc3339() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_606_339_578_409);
        assert_eq!(super::timestamp(t), "2020-11-25T21:26:18.409Z");
    }
}
