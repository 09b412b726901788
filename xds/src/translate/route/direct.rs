//! `direct_response`: the route answers itself (istiod's 500 for an HTTPRoute rule whose
//! backends all have weight 0, a VirtualService `directResponse`).

use filters::route::model::DirectResponse;

use super::Bad;

/// Envoy's default limit on a `direct_response` body.
pub(super) const DIRECT_RESPONSE_BODY_LIMIT: usize = 4096;

/// A `direct_response`: status 200 to 599, an inline body.
pub(super) fn direct_response(
    d: &envoy_types::pb::envoy::config::route::v3::DirectResponseAction,
    at: &str,
) -> Result<DirectResponse, Bad> {
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
    if !(200..600).contains(&d.status) {
        return Err((
            format!("{at}.status"),
            format!("{} is not an HTTP status from 200 to 599", d.status),
        ));
    }
    if d.body_format.is_some() {
        return Err((
            format!("{at}.body_format"),
            "body format strings are not supported".into(),
        ));
    }
    let body = match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
        None => bytes::Bytes::new(),
        Some(Specifier::InlineString(s)) => bytes::Bytes::from(s.clone()),
        Some(Specifier::InlineBytes(b)) => bytes::Bytes::from(b.clone()),
        Some(_) => {
            return Err((
                format!("{at}.body"),
                "only inline bodies are supported (not files or environment variables)".into(),
            ))
        }
    };
    Ok(DirectResponse {
        status: d.status as u16,
        body,
    })
}
