//! Naming the fields of a message that no translator reads: a translator clears what it
//! reads (and the values it accepts without effect) in a copy of the message; whatever is
//! still set is refused by name.

use prost::Message;

/// The proto name of the first field set in `residual`, if any.
pub(crate) fn first_set<M: Message>(type_name: &str, residual: &M) -> Option<String> {
    if residual.encoded_len() == 0 {
        return None;
    }
    match crate::envoy::to_json(type_name, residual) {
        Ok(serde_json::Value::Object(map)) => map.keys().next().cloned(),
        // Set, but not expressible: still refused.
        _ => Some("(unknown field)".into()),
    }
}

/// `Err` naming `at.<field>` when `field` is set.
pub(crate) fn refuse(at: &str, field: Option<String>) -> Result<(), super::Bad> {
    match field {
        None => Ok(()),
        Some(f) => Err((
            if at.is_empty() {
                f
            } else {
                format!("{at}.{f}")
            },
            "not supported".into(),
        )),
    }
}
