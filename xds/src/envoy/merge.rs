//! Protobuf merge semantics over the JSON form of a message: what Envoy does with
//! `--config-yaml` (the bootstrap override pilot-agent passes from `ISTIO_BOOTSTRAP_OVERRIDE`
//! or the bootstrap-override annotation), which it merges over the `-c` file as a protobuf
//! `MergeFrom`: set scalars replace, messages merge field by field, repeated fields are
//! appended, map entries replace by key, and setting one member of a `oneof` clears the
//! others. The message descriptors say which field is which; fields the descriptors do not
//! know (inside an `Any`, or unknown) merge as JSON objects and arrays would.

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value as Json};

use super::{descriptor, JsonError};

/// Well-known types whose JSON form is not an object of their fields: merging replaces them.
const REPLACED_WHOLE: &[&str] = &[
    "google.protobuf.Any",
    "google.protobuf.Value",
    "google.protobuf.ListValue",
    "google.protobuf.Duration",
    "google.protobuf.Timestamp",
    "google.protobuf.FieldMask",
    "google.protobuf.BoolValue",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
    "google.protobuf.Int32Value",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.FloatValue",
    "google.protobuf.DoubleValue",
];

/// Merges `overlay` into `base`, both the JSON form of `type_name`
/// (`envoy.config.bootstrap.v3.Bootstrap`), with protobuf merge semantics.
pub fn merge(type_name: &str, base: &mut Json, overlay: &Json) -> Result<(), JsonError> {
    let desc = descriptor(type_name)?;
    let invalid = |message: String| JsonError::Invalid {
        type_name: type_name.to_string(),
        message,
    };
    match (base.as_object_mut(), overlay.as_object()) {
        (Some(b), Some(o)) => merge_message(Some(&desc), b, o, "").map_err(invalid),
        _ => Err(invalid("a message's JSON form is an object".into())),
    }
}

/// The field `key` names (by its JSON or its proto name).
fn field_of(desc: Option<&MessageDescriptor>, key: &str) -> Option<FieldDescriptor> {
    let d = desc?;
    d.get_field_by_json_name(key)
        .or_else(|| d.get_field_by_name(key))
}

fn merge_message(
    desc: Option<&MessageDescriptor>,
    base: &mut Map<String, Json>,
    overlay: &Map<String, Json>,
    path: &str,
) -> Result<(), String> {
    for (key, value) in overlay {
        let path = format!("{path}.{key}");
        let Some(field) = field_of(desc, key) else {
            merge_untyped(base, key, value, &path)?;
            continue;
        };
        // The base may spell the field the other way (`port_value` / `portValue`).
        let existing = [field.name(), field.json_name(), key.as_str()]
            .into_iter()
            .find(|k| base.contains_key(*k))
            .unwrap_or(key)
            .to_string();
        if let Some(oneof) = field.containing_oneof().filter(|o| !o.is_synthetic()) {
            for other in oneof.fields().filter(|f| f.number() != field.number()) {
                base.remove(other.name());
                base.remove(other.json_name());
            }
        }
        let slot = base.entry(existing).or_insert(Json::Null);
        merge_field(&field, slot, value, &path)?;
    }
    Ok(())
}

fn merge_field(
    field: &FieldDescriptor,
    slot: &mut Json,
    value: &Json,
    path: &str,
) -> Result<(), String> {
    let object_form = field.is_map()
        || matches!(field.kind(), Kind::Message(m) if !REPLACED_WHOLE.contains(&m.full_name()));
    if object_form && !field.is_list() && !value.is_object() {
        return Err(format!("{path}: an object is expected"));
    }
    if field.is_list() && !value.is_array() {
        return Err(format!("{path}: a list is expected"));
    }
    if field.is_map() {
        // Map entries replace by key.
        match (slot.as_object_mut(), value.as_object()) {
            (Some(b), Some(o)) => {
                for (k, v) in o {
                    b.insert(k.clone(), v.clone());
                }
            }
            _ => *slot = value.clone(),
        }
        return Ok(());
    }
    if field.is_list() {
        match (slot.as_array_mut(), value.as_array()) {
            (Some(b), Some(o)) => b.extend(o.iter().cloned()),
            _ => *slot = value.clone(),
        }
        return Ok(());
    }
    match field.kind() {
        Kind::Message(m) if m.full_name() == "google.protobuf.Struct" => {
            // A Struct is a map of Values: its entries replace by key.
            match (slot.as_object_mut(), value.as_object()) {
                (Some(b), Some(o)) => {
                    for (k, v) in o {
                        b.insert(k.clone(), v.clone());
                    }
                }
                _ => *slot = value.clone(),
            }
        }
        Kind::Message(m) if !REPLACED_WHOLE.contains(&m.full_name()) => {
            match (slot.as_object_mut(), value.as_object()) {
                (Some(b), Some(o)) => merge_message(Some(&m), b, o, path)?,
                _ => *slot = value.clone(),
            }
        }
        // Scalars, enums and the well-known types above: the override's value is set.
        _ => *slot = value.clone(),
    }
    Ok(())
}

/// A field no descriptor describes: objects merge, arrays append, the rest replaces.
fn merge_untyped(
    base: &mut Map<String, Json>,
    key: &str,
    value: &Json,
    path: &str,
) -> Result<(), String> {
    match (base.get_mut(key), value) {
        (Some(Json::Object(b)), Json::Object(o)) => merge_message(None, b, o, path)?,
        (Some(Json::Array(b)), Json::Array(o)) => b.extend(o.iter().cloned()),
        _ => {
            base.insert(key.to_string(), value.clone());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::merge;

    const BOOTSTRAP: &str = "envoy.config.bootstrap.v3.Bootstrap";

    #[test]
    fn merges_as_protobuf_merge_from() {
        let mut base = json!({
            "node": {"id": "a", "cluster": "c", "metadata": {"X": {"deep": 1}, "Y": "y"}},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 15000}}},
            "static_resources": {"listeners": [{"name": "one"}], "clusters": [{
                "name": "c1",
                "load_assignment": {"endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": "/x"}}}}]}]}
            }]},
        });
        let overlay = json!({
            "node": {"cluster": "d", "metadata": {"X": {"other": 2}}},
            "admin": {"address": {"socketAddress": {"portValue": 15001}}},
            "static_resources": {"listeners": [{"name": "two"}]},
        });
        merge(BOOTSTRAP, &mut base, &overlay).unwrap();
        assert_eq!(base["node"]["id"], "a", "unset fields stay");
        assert_eq!(base["node"]["cluster"], "d", "scalars replace");
        // Struct entries replace by key (not a deep merge), other keys stay.
        assert_eq!(base["node"]["metadata"]["X"], json!({"other": 2}));
        assert_eq!(base["node"]["metadata"]["Y"], "y");
        // Messages merge field by field, whichever way the field is spelled.
        let sa = &base["admin"]["address"]["socket_address"];
        assert_eq!(
            (sa["address"].clone(), sa["port_value"].clone()),
            (json!("127.0.0.1"), json!(15001))
        );
        let names: Vec<_> = base["static_resources"]["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["name"].clone())
            .collect();
        assert_eq!(
            names,
            [json!("one"), json!("two")],
            "repeated fields append"
        );

        // Setting one member of a oneof clears the other.
        let mut addr = json!({"admin": {"address": {"pipe": {"path": "/a"}}}});
        let over =
            json!({"admin": {"address": {"socket_address": {"address": "::1", "port_value": 1}}}});
        merge(BOOTSTRAP, &mut addr, &over).unwrap();
        assert!(addr["admin"]["address"].get("pipe").is_none(), "{addr}");
        assert!(merge(BOOTSTRAP, &mut addr, &json!([1])).is_err());
    }
}
