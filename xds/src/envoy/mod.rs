//! Envoy's API types: the protobuf messages of the `envoy-types` crate, and their
//! canonical JSON form (as in config dumps), converted through a descriptor pool compiled
//! from the same protos at build time.

pub mod merge;

use std::sync::OnceLock;

use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};

/// The descriptor set `build.rs` compiled.
static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy.bin"));

/// Why a JSON document is not the message it should be.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// The type is not in the descriptor set.
    #[error("unknown message type {0}")]
    UnknownType(String),
    /// The JSON does not match the message.
    #[error("{type_name}: {message}")]
    Invalid {
        /// The message type.
        type_name: String,
        /// The deserializer's message.
        message: String,
    },
}

/// The pool of Envoy message descriptors.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(DESCRIPTORS).expect("descriptor set built by build.rs")
    })
}

fn descriptor(type_name: &str) -> Result<MessageDescriptor, JsonError> {
    pool()
        .get_message_by_name(type_name)
        .ok_or_else(|| JsonError::UnknownType(type_name.to_string()))
}

/// Decodes the JSON form of `type_name` (`envoy.config.cluster.v3.Cluster`) into `M`.
/// A top-level `@type` is accepted and ignored.
pub fn from_json<M: prost::Message + Default>(
    type_name: &str,
    json: &serde_json::Value,
) -> Result<M, JsonError> {
    decode_json(type_name, json, true)
}

/// As [`from_json`], skipping fields the descriptors do not know, as Envoy reads a static
/// bootstrap under `--allow-unknown-static-fields` (pilot-agent always passes it).
pub fn from_json_allowing_unknown<M: prost::Message + Default>(
    type_name: &str,
    json: &serde_json::Value,
) -> Result<M, JsonError> {
    decode_json(type_name, json, false)
}

fn decode_json<M: prost::Message + Default>(
    type_name: &str,
    json: &serde_json::Value,
    deny_unknown: bool,
) -> Result<M, JsonError> {
    let desc = descriptor(type_name)?;
    let mut json = json.clone();
    if let Some(obj) = json.as_object_mut() {
        obj.remove("@type");
    }
    let invalid = |message: String| JsonError::Invalid {
        type_name: type_name.to_string(),
        message,
    };
    let options = prost_reflect::DeserializeOptions::new().deny_unknown_fields(deny_unknown);
    let dynamic = DynamicMessage::deserialize_with_options(desc, json, &options)
        .map_err(|e| invalid(e.to_string()))?;
    M::decode(dynamic.encode_to_vec().as_slice()).map_err(|e| invalid(e.to_string()))
}

/// The JSON form of `message` (of type `type_name`), with proto field names, as Envoy's
/// admin API prints it.
pub fn to_json<M: prost::Message>(
    type_name: &str,
    message: &M,
) -> Result<serde_json::Value, JsonError> {
    encoded_to_json(type_name, &message.encode_to_vec())
}

/// The JSON form of an encoded message of type `type_name` (an `Any`'s value).
pub fn encoded_to_json(type_name: &str, bytes: &[u8]) -> Result<serde_json::Value, JsonError> {
    let invalid = |message: String| JsonError::Invalid {
        type_name: type_name.to_string(),
        message,
    };
    let dynamic = DynamicMessage::decode(descriptor(type_name)?, bytes)
        .map_err(|e| invalid(e.to_string()))?;
    let options = SerializeOptions::new().use_proto_field_name(true);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::listener::v3::Listener;

    use super::*;

    fn dump(name: &str) -> serde_json::Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/testdata/istio/config-dumps")
            .join(name);
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn istio_waypoint_dumps_decode_and_round_trip() {
        for file in ["waypoint-httpbin-1.21.json", "waypoint-bookinfo.json"] {
            let d = dump(file);
            let mut count = 0;
            for c in d["configs"].as_array().unwrap() {
                let t = c["@type"].as_str().unwrap();
                if t.ends_with("ListenersConfigDump") {
                    for l in c["dynamic_listeners"].as_array().unwrap() {
                        let json = &l["active_state"]["listener"];
                        let listener: Listener =
                            from_json("envoy.config.listener.v3.Listener", json)
                                .unwrap_or_else(|e| panic!("{file}: {}: {e}", json["name"]));
                        let back = to_json("envoy.config.listener.v3.Listener", &listener).unwrap();
                        assert_eq!(back["name"], json["name"]);
                        count += 1;
                    }
                }
                if t.ends_with("ClustersConfigDump") {
                    for cl in c["dynamic_active_clusters"].as_array().unwrap() {
                        let _: Cluster =
                            from_json("envoy.config.cluster.v3.Cluster", &cl["cluster"])
                                .unwrap_or_else(|e| panic!("{file}: {e}"));
                        count += 1;
                    }
                }
                if t.ends_with("EndpointsConfigDump") {
                    for e in c["dynamic_endpoint_configs"].as_array().unwrap() {
                        let _: ClusterLoadAssignment = from_json(
                            "envoy.config.endpoint.v3.ClusterLoadAssignment",
                            &e["endpoint_config"],
                        )
                        .unwrap_or_else(|e| panic!("{file}: {e}"));
                        count += 1;
                    }
                }
            }
            assert!(count >= 3, "{file}: {count}");
        }
    }
}
