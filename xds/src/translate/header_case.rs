//! HTTP/1.1 header-case preservation (ProxyConfig `proxyHeaders.preserveHttp1HeaderCase`):
//! istiod writes the `preserve_case` stateful formatter into the connection manager's
//! `http_protocol_options.header_key_format` (`buildHTTPConnectionManager`,
//! listener_builder.go) and into the `http_protocol_options` of the clusters of HTTP and
//! unknown-protocol ports (`setUpstreamProtocol`, `preserveCaseFormatterConfig`,
//! cluster_builder.go). Other formats are refused by field.

use envoy_types::pb::envoy::config::core::v3::{
    http1_protocol_options::header_key_format::HeaderFormat, Http1ProtocolOptions,
};
use envoy_types::pb::envoy::extensions::http::header_formatters::preserve_case::v3::PreserveCaseFormatterConfig;
use prost::Message;

use super::Bad;

/// Whether `h1` asks for header names in their original case; `at` names `h1` in errors.
pub fn preserve_case(h1: &Http1ProtocolOptions, at: &str) -> Result<bool, Bad> {
    let Some(format) = h1
        .header_key_format
        .as_ref()
        .and_then(|f| f.header_format.as_ref())
    else {
        return Ok(false);
    };
    let field = format!("{at}.header_key_format");
    let HeaderFormat::StatefulFormatter(ext) = format else {
        return Err((
            field,
            "only the preserve_case formatter is supported".into(),
        ));
    };
    let config = ext.typed_config.as_ref();
    let url = config.map(|a| a.type_url.as_str()).unwrap_or_default();
    if !url.ends_with(
        "envoy.extensions.http.header_formatters.preserve_case.v3.PreserveCaseFormatterConfig",
    ) {
        return Err((
            format!("{field}.stateful_formatter"),
            format!("only the preserve_case formatter is supported, got {url:?}"),
        ));
    }
    let value = config.map(|a| a.value.as_slice()).unwrap_or_default();
    let c = PreserveCaseFormatterConfig::decode(value)
        .map_err(|e| (format!("{field}.stateful_formatter"), e.to_string()))?;
    if c != PreserveCaseFormatterConfig::default() {
        return Err((
            format!("{field}.stateful_formatter.typed_config"),
            "forward_reason_phrase and formatter_type_on_envoy_headers are not supported".into(),
        ));
    }
    Ok(true)
}
