//! Per-route filter configuration (`typed_per_filter_config`) as istiod sets it on waypoint
//! routes: CORS (`envoy.filters.http.cors`, from an HTTPRoute `CORS` filter or a
//! VirtualService `corsPolicy`; `TranslateCORSPolicy` in istiod's route.go) and fault
//! injection (`envoy.filters.http.fault`, from a VirtualService `fault`; `TranslateFault`).
//! Any other filter name, and any field the waypoint does not implement, is an error naming
//! it.

use std::collections::HashMap;
use std::time::Duration;

use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    fault_abort, FaultAbort as PbAbort, HttpFault,
};
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::google::protobuf::Any;
use filters::route::model::{
    AbortStatus, Cors, Fault, FaultAbort, FaultDelay, Filter, OriginMatch,
};
use prost::Message;

use super::Bad;

const CORS: &str = "envoy.filters.http.cors";
const FAULT: &str = "envoy.filters.http.fault";
const CORS_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy";
const FAULT_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";

/// The route filters `configs` stand for (fault first: Envoy runs the fault filter before
/// the CORS filter and the router).
pub fn convert(configs: &HashMap<String, Any>, at: &str) -> Result<Vec<Filter>, Bad> {
    let mut names: Vec<&String> = configs.keys().collect();
    names.sort_by_key(|n| (n.as_str() != FAULT, n.as_str()));
    let mut out = Vec::new();
    for name in names {
        let any = &configs[name];
        let fat = format!("{at}[{name}]");
        let filter =
            match (name.as_str(), any.type_url.as_str()) {
                (CORS, CORS_TYPE) => Filter::Cors(cors(&decode(any, &fat)?, &fat)?),
                (FAULT, FAULT_TYPE) => Filter::Fault(fault(&decode(any, &fat)?, &fat)?),
                (CORS | FAULT, other) => {
                    return Err((fat, format!("unexpected configuration type {other}")))
                }
                _ => return Err((
                    fat,
                    "per-route configuration of this filter is not supported (only CORS and fault)"
                        .into(),
                )),
            };
        out.push(filter);
    }
    Ok(out)
}

fn decode<M: Message + Default>(any: &Any, at: &str) -> Result<M, Bad> {
    M::decode(any.value.as_slice()).map_err(|e| (at.to_string(), e.to_string()))
}

/// A `FractionalPercent` as a share, 0 to 1.
pub fn fraction(f: &FractionalPercent) -> f64 {
    let denominator = match f.denominator {
        0 => 100.0,
        1 => 10_000.0,
        _ => 1_000_000.0,
    };
    (f64::from(f.numerator) / denominator).min(1.0)
}

fn cors(p: &CorsPolicy, at: &str) -> Result<Cors, Bad> {
    let unsupported = |field: &str, why: &str| Err((format!("{at}.{field}"), why.to_string()));
    if let Some(f) = &p.filter_enabled {
        if f.default_value.as_ref().map_or(0.0, fraction) < 1.0 {
            return unsupported("filter_enabled", "only 100% is supported");
        }
    }
    if p.shadow_enabled.is_some() {
        return unsupported("shadow_enabled", "shadow CORS is not supported");
    }
    if p.allow_private_network_access.is_some_and(|v| v.value) {
        return unsupported(
            "allow_private_network_access",
            "private network access is not supported",
        );
    }
    let allow_origins = p
        .allow_origin_string_match
        .iter()
        .enumerate()
        .map(|(i, m)| {
            super::matcher::string_matcher(m)
                .map(OriginMatch::Matcher)
                .map_err(|(f, why)| (format!("{at}.allow_origin_string_match[{i}]{f}"), why))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let list = |s: &str| -> Vec<String> {
        s.split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .collect()
    };
    let max_age = match p.max_age.as_str() {
        "" => None,
        s => Some(s.parse::<u32>().map_err(|_| {
            (
                format!("{at}.max_age"),
                format!("{s:?} is not a number of seconds"),
            )
        })?),
    };
    Ok(Cors {
        allow_origins,
        allow_methods: list(&p.allow_methods),
        allow_headers: list(&p.allow_headers),
        expose_headers: list(&p.expose_headers),
        allow_credentials: p.allow_credentials.is_some_and(|v| v.value),
        max_age,
        forward_not_matching_preflights: p.forward_not_matching_preflights.is_none_or(|v| v.value),
    })
}

fn fault(f: &HttpFault, at: &str) -> Result<Fault, Bad> {
    let unsupported = |field: &str| {
        Err((
            format!("{at}.{field}"),
            "not supported (istiod does not set it)".to_string(),
        ))
    };
    if !f.headers.is_empty() {
        return unsupported("headers");
    }
    if !f.upstream_cluster.is_empty() {
        return unsupported("upstream_cluster");
    }
    if !f.downstream_nodes.is_empty() {
        return unsupported("downstream_nodes");
    }
    if f.max_active_faults.is_some() {
        return unsupported("max_active_faults");
    }
    if f.response_rate_limit.is_some() {
        return unsupported("response_rate_limit");
    }
    if f.filter_metadata.is_some() {
        return unsupported("filter_metadata");
    }
    // The *_runtime fields name runtime keys; with no runtime overrides (this proxy has no
    // runtime layer) Envoy uses the configured values, as here.
    let delay = match &f.delay {
        None => None,
        Some(d) => Some(delay(d, &format!("{at}.delay"))?),
    };
    let abort = match &f.abort {
        None => None,
        Some(a) => Some(abort(a, &format!("{at}.abort"))?),
    };
    Ok(Fault { delay, abort })
}

fn delay(
    d: &envoy_types::pb::envoy::extensions::filters::common::fault::v3::FaultDelay,
    at: &str,
) -> Result<FaultDelay, Bad> {
    use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
    let duration = match &d.fault_delay_secifier {
        Some(FaultDelaySecifier::FixedDelay(p)) => super::duration(Some(p)),
        Some(FaultDelaySecifier::HeaderDelay(_)) => {
            return Err((
                format!("{at}.header_delay"),
                "header-controlled delays are not supported".into(),
            ))
        }
        None => None,
    };
    let duration: Duration = duration.ok_or_else(|| {
        (
            format!("{at}.fixed_delay"),
            "a delay above zero is required".to_string(),
        )
    })?;
    Ok(FaultDelay {
        duration,
        fraction: d.percentage.as_ref().map_or(0.0, fraction),
    })
}

fn abort(a: &PbAbort, at: &str) -> Result<FaultAbort, Bad> {
    let status = match a.error_type {
        Some(fault_abort::ErrorType::HttpStatus(s)) if (200..600).contains(&s) => {
            AbortStatus::Http(s as u16)
        }
        Some(fault_abort::ErrorType::HttpStatus(s)) => {
            return Err((
                format!("{at}.http_status"),
                format!("{s} is not an HTTP status from 200 to 599"),
            ))
        }
        Some(fault_abort::ErrorType::GrpcStatus(s)) => AbortStatus::Grpc(s),
        Some(fault_abort::ErrorType::HeaderAbort(_)) => {
            return Err((
                format!("{at}.header_abort"),
                "header-controlled aborts are not supported".into(),
            ))
        }
        None => {
            return Err((
                format!("{at}.error_type"),
                "an HTTP or gRPC status is required".into(),
            ))
        }
    };
    let body = if a.response_body.is_empty() {
        "fault filter abort".to_string()
    } else {
        a.response_body.clone()
    };
    Ok(FaultAbort {
        status,
        fraction: a.percentage.as_ref().map_or(0.0, fraction),
        body,
    })
}
