//! `envoy.service.auth.v3.Authorization/Check` over the upstream pools (HTTP/2), and the
//! mapping between the protobuf messages and `filters::authz::ext`'s types.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::{
    address, header_value_option::HeaderAppendAction, socket_address::PortSpecifier, Address,
    HeaderValueOption, SocketAddress,
};
use envoy_types::pb::envoy::service::auth::v3::{
    attribute_context, authorization_client::AuthorizationClient, check_response, AttributeContext,
    CheckRequest as PbCheckRequest, CheckResponse,
};
use envoy_types::pb::google::protobuf::Timestamp;
use filters::authz::ext::{
    Allowed, CheckError, CheckOutcome, CheckRequest, Denied, HeaderAction, HeaderOp, Provider,
};
use filters::model::RequestContext;
use http::{HeaderName, HeaderValue, StatusCode};

use crate::state::Proxy;
use crate::upstream::grpc::PoolChannel;

fn socket(addr: Option<SocketAddr>) -> Option<Address> {
    addr.map(|a| Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: a.ip().to_string(),
            port_specifier: Some(PortSpecifier::PortValue(a.port() as u32)),
            ..Default::default()
        })),
    })
}

/// The protobuf `CheckRequest` for `check`; `local_principal` is this waypoint's identity
/// (the destination principal Envoy reports).
pub fn to_proto(
    check: &CheckRequest,
    local_principal: Option<String>,
    pack_as_bytes: bool,
) -> PbCheckRequest {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let http = check.http.as_ref().map(|h| {
        let mut headers: HashMap<String, String> = h.headers.iter().cloned().collect();
        if h.body.is_some() {
            headers.insert(
                "x-envoy-auth-partial-body".into(),
                h.partial_body.to_string(),
            );
        }
        let (body, raw_body) = match &h.body {
            Some(b) if pack_as_bytes => (String::new(), b.to_vec()),
            Some(b) => (String::from_utf8_lossy(b).into_owned(), Vec::new()),
            None => (String::new(), Vec::new()),
        };
        attribute_context::HttpRequest {
            id: h.id.clone(),
            method: h.method.clone(),
            headers,
            path: h.path.clone(),
            host: h.host.clone(),
            scheme: h.scheme.clone(),
            size: h.size,
            protocol: h.protocol.clone(),
            body,
            raw_body,
            ..Default::default()
        }
    });
    PbCheckRequest {
        attributes: Some(AttributeContext {
            source: Some(attribute_context::Peer {
                address: socket(check.source.address),
                principal: check.source.principal.clone().unwrap_or_default(),
                ..Default::default()
            }),
            destination: Some(attribute_context::Peer {
                address: socket(check.destination.address),
                principal: local_principal.unwrap_or_default(),
                ..Default::default()
            }),
            request: Some(attribute_context::Request {
                time: Some(Timestamp {
                    seconds: now.as_secs() as i64,
                    nanos: now.subsec_nanos() as i32,
                }),
                http,
            }),
            ..Default::default()
        }),
    }
}

/// How a `HeaderValueOption` applies. `append`, when set, decides (true: append to an
/// existing header, false: overwrite); otherwise `append_action`, whose default is read as
/// "overwrite or add", Envoy's documented default for ext_authz headers.
fn action(h: &HeaderValueOption, append_true: HeaderAction) -> HeaderAction {
    #[allow(deprecated)]
    if let Some(append) = &h.append {
        return if append.value {
            append_true
        } else {
            HeaderAction::Set
        };
    }
    match HeaderAppendAction::try_from(h.append_action) {
        Ok(HeaderAppendAction::AddIfAbsent) => HeaderAction::AddIfAbsent,
        Ok(HeaderAppendAction::OverwriteIfExists) => HeaderAction::SetIfExists,
        _ => HeaderAction::Set,
    }
}

fn ops(list: &[HeaderValueOption], append_true: HeaderAction) -> Vec<HeaderOp> {
    list.iter()
        .filter_map(|h| {
            let hv = h.header.as_ref()?;
            let name = HeaderName::from_bytes(hv.key.as_bytes()).ok()?;
            let raw = if hv.raw_value.is_empty() {
                hv.value.as_bytes()
            } else {
                &hv.raw_value[..]
            };
            let value = HeaderValue::from_bytes(raw).ok()?;
            Some(HeaderOp {
                name,
                value,
                action: action(h, append_true),
            })
        })
        .collect()
}

/// Reads a `CheckResponse`: status OK allows (with the OK response's changes), anything
/// else denies (with the denied response's status, headers and body; 403 by default).
pub fn from_proto(resp: CheckResponse) -> CheckOutcome {
    let code = resp.status.as_ref().map(|s| s.code).unwrap_or(0);
    if code == 0 {
        let mut allowed = Allowed::default();
        if let Some(check_response::HttpResponse::OkResponse(ok)) = resp.http_response {
            allowed.request_headers = ops(&ok.headers, HeaderAction::AppendToExisting);
            allowed.remove_headers = ok
                .headers_to_remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect();
            allowed.response_headers = ops(&ok.response_headers_to_add, HeaderAction::Add);
            allowed.query_set = ok
                .query_parameters_to_set
                .iter()
                .map(|q| (q.key.clone(), q.value.clone()))
                .collect();
            allowed.query_remove = ok.query_parameters_to_remove.clone();
        }
        return CheckOutcome::Allow(allowed);
    }
    let mut denied = Denied::default();
    if let Some(check_response::HttpResponse::DeniedResponse(d)) = resp.http_response {
        if let Some(s) = d
            .status
            .and_then(|s| u16::try_from(s.code).ok())
            .filter(|c| *c >= 100)
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            denied.status = s;
        }
        denied.headers = ops(&d.headers, HeaderAction::Add);
        denied.body = Bytes::from(d.body);
    }
    CheckOutcome::Deny(denied)
}

/// Sends one gRPC check.
pub async fn check(
    proxy: &Arc<Proxy>,
    provider: &Provider,
    ctx: &RequestContext,
    request: CheckRequest,
) -> Result<CheckOutcome, CheckError> {
    let endpoint = super::resolve(&ctx.snapshot, provider).await?;
    let local = format!("spiffe://{}", proxy.certs.current().identity.principal());
    let pack = provider.body.is_some_and(|b| b.pack_as_bytes);
    let mut client = AuthorizationClient::new(PoolChannel::new(proxy.clone(), endpoint));
    let mut req = tonic::Request::new(to_proto(&request, Some(local), pack));
    req.set_timeout(provider.timeout);
    match client.check(req).await {
        Ok(resp) => Ok(from_proto(resp.into_inner())),
        Err(status) => {
            let connect = crate::upstream::grpc::unreachable(&status);
            let reason = format!("gRPC status {:?}: {}", status.code(), status.message());
            Err(if connect {
                CheckError::Unreachable {
                    provider: provider.name.clone(),
                    reason,
                }
            } else {
                CheckError::Failed {
                    provider: provider.name.clone(),
                    reason,
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::HeaderValue as PbHeaderValue;
    use envoy_types::pb::envoy::r#type::v3::HttpStatus;
    use envoy_types::pb::envoy::service::auth::v3::{DeniedHttpResponse, OkHttpResponse};
    use envoy_types::pb::google::protobuf::BoolValue;
    use envoy_types::pb::google::rpc::Status;
    use filters::authz::ext::{HttpRequestAttributes, Peer};

    use super::*;

    fn hv(key: &str, value: &str, append: Option<bool>, action: i32) -> HeaderValueOption {
        #[allow(deprecated)]
        HeaderValueOption {
            header: Some(PbHeaderValue {
                key: key.into(),
                value: value.into(),
                ..Default::default()
            }),
            append: append.map(|value| BoolValue { value }),
            append_action: action,
            ..Default::default()
        }
    }

    #[test]
    fn request_attributes() {
        let check = CheckRequest {
            source: Peer {
                address: Some("127.0.0.7:0".parse().unwrap()),
                principal: Some("spiffe://cluster.local/ns/default/sa/sleep".into()),
            },
            destination: Peer {
                address: Some("127.96.0.10:80".parse().unwrap()),
                principal: None,
            },
            http: Some(HttpRequestAttributes {
                method: "GET".into(),
                path: "/x?y=1".into(),
                headers: vec![("x-a".into(), "1".into())],
                body: Some(Bytes::from_static(b"hi")),
                ..Default::default()
            }),
        };
        let pb = to_proto(&check, Some("spiffe://w".into()), false);
        let a = pb.attributes.unwrap();
        assert_eq!(
            a.source.as_ref().unwrap().principal,
            "spiffe://cluster.local/ns/default/sa/sleep"
        );
        assert_eq!(a.destination.as_ref().unwrap().principal, "spiffe://w");
        let h = a.request.unwrap().http.unwrap();
        assert_eq!(h.path, "/x?y=1");
        assert_eq!(h.body, "hi");
        assert_eq!(h.headers["x-a"], "1");
        assert_eq!(h.headers["x-envoy-auth-partial-body"], "false");
        let packed = to_proto(&check, None, true);
        let h = packed.attributes.unwrap().request.unwrap().http.unwrap();
        assert_eq!((h.body.as_str(), &h.raw_body[..]), ("", &b"hi"[..]));
    }

    #[test]
    fn ok_response() {
        let resp = CheckResponse {
            status: Some(Status::default()),
            http_response: Some(check_response::HttpResponse::OkResponse(OkHttpResponse {
                headers: vec![
                    hv("x-set", "1", None, 0),
                    hv("x-append", "2", Some(true), 0),
                    hv(
                        "x-absent",
                        "3",
                        None,
                        HeaderAppendAction::AddIfAbsent as i32,
                    ),
                ],
                headers_to_remove: vec!["x-secret".into()],
                response_headers_to_add: vec![hv("x-down", "d", None, 0)],
                ..Default::default()
            })),
            ..Default::default()
        };
        let CheckOutcome::Allow(a) = from_proto(resp) else {
            panic!("OK allows")
        };
        let actions: Vec<HeaderAction> = a.request_headers.iter().map(|o| o.action).collect();
        assert_eq!(
            actions,
            vec![
                HeaderAction::Set,
                HeaderAction::AppendToExisting,
                HeaderAction::AddIfAbsent
            ]
        );
        assert_eq!(a.remove_headers[0], "x-secret");
        assert_eq!(a.response_headers[0].name, "x-down");
    }

    #[test]
    fn denied_response() {
        let resp = CheckResponse {
            status: Some(Status {
                code: 7,
                ..Default::default()
            }),
            http_response: Some(check_response::HttpResponse::DeniedResponse(
                DeniedHttpResponse {
                    status: Some(HttpStatus { code: 401 }),
                    headers: vec![hv("x-why", "bad", None, 0)],
                    body: "denied!".into(),
                },
            )),
            ..Default::default()
        };
        let CheckOutcome::Deny(d) = from_proto(resp) else {
            panic!("PERMISSION_DENIED denies")
        };
        assert_eq!((d.status.as_u16(), &d.body[..]), (401, &b"denied!"[..]));
        assert_eq!(d.headers[0].name, "x-why");
        let bare = CheckResponse {
            status: Some(Status {
                code: 16,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            from_proto(bare),
            CheckOutcome::Deny(Denied::default()),
            "no denied response: 403, empty"
        );
    }
}
