//! Trace context on the wire: W3C `traceparent`/`tracestate`, B3 single (`b3`) and multi
//! (`x-b3-*`) headers, read from the request (or the CONNECT's `traceparent` when the
//! request has none) and written onto the upstream request.

use http::{HeaderMap, HeaderValue};
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

/// Which header family carried the incoming context (the same family is written back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// W3C trace context.
    W3c,
    /// `b3: trace-span-sampled`.
    B3Single,
    /// `x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled`.
    B3Multi,
}

/// The incoming context, if any header carries a valid one.
pub fn extract(
    headers: &HeaderMap,
    connect_traceparent: Option<&str>,
) -> Option<(SpanContext, Format)> {
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    if let Some(tp) = get("traceparent") {
        if let Some(cx) = parse_traceparent(tp, get("tracestate")) {
            return Some((cx, Format::W3c));
        }
    }
    if let Some(b3) = get("b3") {
        if let Some(cx) = parse_b3_single(b3) {
            return Some((cx, Format::B3Single));
        }
    }
    if let (Some(t), Some(s)) = (get("x-b3-traceid"), get("x-b3-spanid")) {
        let sampled = get("x-b3-flags") == Some("1")
            || matches!(get("x-b3-sampled"), Some("1") | Some("true"));
        if let Some(cx) = b3_context(t, s, Some(sampled)) {
            return Some((cx, Format::B3Multi));
        }
    }
    connect_traceparent
        .and_then(|tp| parse_traceparent(tp, None))
        .map(|cx| (cx, Format::W3c))
}

/// Parses `00-<32 hex>-<16 hex>-<2 hex>`; all-zero ids are invalid.
pub fn parse_traceparent(v: &str, state: Option<&str>) -> Option<SpanContext> {
    let mut parts = v.trim().split('-');
    let version = parts.next()?;
    let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2
        || version == "ff"
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace = TraceId::from_hex(trace).ok()?;
    let span = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    if trace == TraceId::INVALID || span == SpanId::INVALID {
        return None;
    }
    let state = state
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    Some(SpanContext::new(
        trace,
        span,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        state,
    ))
}

/// Parses `b3: {traceid}-{spanid}[-{sampled}[-{parentid}]]` (a lone `0`/`1`/`d` carries
/// only a decision and no context).
fn parse_b3_single(v: &str) -> Option<SpanContext> {
    let mut parts = v.trim().split('-');
    let (t, s) = (parts.next()?, parts.next()?);
    let sampled = match parts.next() {
        None => None,
        Some("1") | Some("d") => Some(true),
        Some("0") => Some(false),
        Some(_) => return None,
    };
    b3_context(t, s, sampled)
}

fn b3_context(trace: &str, span: &str, sampled: Option<bool>) -> Option<SpanContext> {
    // 64-bit B3 trace ids are left-padded to 128 bits.
    let trace = match trace.len() {
        16 => TraceId::from_hex(&format!("{:0>32}", trace)).ok()?,
        32 => TraceId::from_hex(trace).ok()?,
        _ => return None,
    };
    if span.len() != 16 {
        return None;
    }
    let span = SpanId::from_hex(span).ok()?;
    if trace == TraceId::INVALID || span == SpanId::INVALID {
        return None;
    }
    let flags = if sampled.unwrap_or(false) {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    Some(SpanContext::new(
        trace,
        span,
        flags,
        true,
        TraceState::default(),
    ))
}

/// Writes `cx` onto an outgoing request in `format` (W3C is always written too, since
/// that is what OpenTelemetry backends and Istio's waypoint read).
pub fn inject(headers: &mut HeaderMap, cx: &SpanContext, format: Format) {
    let sampled = cx.trace_flags().is_sampled();
    let tp = format!(
        "00-{}-{}-{:02x}",
        cx.trace_id(),
        cx.span_id(),
        cx.trace_flags().to_u8()
    );
    if let Ok(v) = HeaderValue::from_str(&tp) {
        headers.insert("traceparent", v);
    }
    let state = cx.trace_state().header();
    if !state.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&state) {
            headers.insert("tracestate", v);
        }
    }
    match format {
        Format::W3c => {}
        Format::B3Single => {
            let v = format!(
                "{}-{}-{}",
                cx.trace_id(),
                cx.span_id(),
                if sampled { "1" } else { "0" }
            );
            if let Ok(v) = HeaderValue::from_str(&v) {
                headers.insert("b3", v);
            }
        }
        Format::B3Multi => {
            for (name, value) in [
                ("x-b3-traceid", cx.trace_id().to_string()),
                ("x-b3-spanid", cx.span_id().to_string()),
                ("x-b3-sampled", if sampled { "1" } else { "0" }.to_string()),
            ] {
                if let Ok(v) = HeaderValue::from_str(&value) {
                    headers.insert(name, v);
                }
            }
            headers.remove("x-b3-parentspanid");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn reads_w3c_b3_and_the_connect_fallback() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let (cx, f) = extract(
            &headers(&[("traceparent", tp), ("tracestate", "a=1")]),
            None,
        )
        .unwrap();
        assert_eq!(f, Format::W3c);
        assert_eq!(
            cx.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert!(cx.is_sampled());
        assert_eq!(cx.trace_state().get("a"), Some("1"));

        let (cx, f) = extract(
            &headers(&[(
                "b3",
                "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
            )]),
            None,
        )
        .unwrap();
        assert_eq!(f, Format::B3Single);
        assert_eq!(cx.span_id().to_string(), "e457b5a2e4d86bd1");

        let (cx, f) = extract(
            &headers(&[
                ("x-b3-traceid", "463ac35c9f6413ad"),
                ("x-b3-spanid", "a2fb4a1d1a96d312"),
                ("x-b3-sampled", "1"),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(f, Format::B3Multi);
        assert_eq!(
            cx.trace_id().to_string(),
            "0000000000000000463ac35c9f6413ad"
        );
        assert!(cx.is_sampled());

        assert!(extract(&HeaderMap::new(), None).is_none());
        let (cx, _) = extract(&HeaderMap::new(), Some(tp)).unwrap();
        assert_eq!(cx.span_id().to_string(), "b7ad6b7169203331");
    }

    #[test]
    fn rejects_malformed_contexts() {
        for tp in [
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-xyz-b7ad6b7169203331-01",
        ] {
            assert!(parse_traceparent(tp, None).is_none(), "{tp}");
        }
    }

    #[test]
    fn injects_in_the_incoming_family() {
        let cx = parse_traceparent(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            None,
        )
        .unwrap();
        let mut h = HeaderMap::new();
        inject(&mut h, &cx, Format::B3Multi);
        assert_eq!(
            h["traceparent"],
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        assert_eq!(h["x-b3-spanid"], "b7ad6b7169203331");
        assert_eq!(h["x-b3-sampled"], "1");
    }
}
