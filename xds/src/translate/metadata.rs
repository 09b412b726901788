//! Reading `google.protobuf.Struct` metadata (cluster, endpoint and filter metadata).

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::google::protobuf::{value::Kind, Value};

/// `filter_metadata[filter]` followed by `keys`.
pub fn path<'a>(m: &'a Metadata, filter: &str, keys: &[&str]) -> Option<&'a Value> {
    let s = m.filter_metadata.get(filter)?;
    let (first, rest) = keys.split_first()?;
    let mut v = s.fields.get(*first)?;
    for k in rest {
        v = field(v, k)?;
    }
    Some(v)
}

/// A field of a struct value.
pub fn field<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match &v.kind {
        Some(Kind::StructValue(s)) => s.fields.get(key),
        _ => None,
    }
}

/// A string value.
pub fn string(v: Option<&Value>) -> Option<String> {
    match &v?.kind {
        Some(Kind::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

/// A list value.
pub fn list(v: &Value) -> Option<&Vec<Value>> {
    match &v.kind {
        Some(Kind::ListValue(l)) => Some(&l.values),
        _ => None,
    }
}
