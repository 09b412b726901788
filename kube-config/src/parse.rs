use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml::Value;

use super::objects::{Gateway, Namespace, Pod, Service};
use super::routes::objects::{GrpcRoute, HttpRoute, ReferenceGrant, TcpRoute};
use super::LocalConfigError;

/// The objects of one configuration file, each with the label used in error messages.
#[derive(Debug, Default)]
pub struct Objects {
    pub(crate) namespaces: Vec<(String, Namespace)>,
    pub(crate) services: Vec<(String, Service)>,
    pub(crate) pods: Vec<(String, Pod)>,
    pub(crate) gateways: Vec<(String, Gateway)>,
    pub(crate) http_routes: Vec<(String, HttpRoute)>,
    pub(crate) grpc_routes: Vec<(String, GrpcRoute)>,
    pub(crate) tcp_routes: Vec<(String, TcpRoute)>,
    pub(crate) grants: Vec<(String, ReferenceGrant)>,
    pub(crate) policies: Vec<(String, super::authz::AuthorizationPolicy)>,
    pub(crate) authentications: Vec<(String, super::authn::RequestAuthentication)>,
    pub(crate) config_maps: Vec<(String, super::mesh::ConfigMap)>,
    pub(crate) secrets: Vec<(String, super::secret::Secret)>,
    pub(crate) telemetries: Vec<(String, super::telemetry::Telemetry)>,
    pub(crate) destination_rules: Vec<(String, super::destination_rule::DestinationRule)>,
    pub(crate) service_entries: Vec<(String, super::service_entry::ServiceEntry)>,
    pub(crate) backend_tls_policies: Vec<(String, super::backend_tls::BackendTlsPolicy)>,
}

/// The largest configuration file read (a cluster's worth of objects is far smaller).
pub const MAX_TEXT: usize = 64 * 1024 * 1024;
/// The deepest nesting of flow collections (`[`, `{`) accepted. Kubernetes objects nest a
/// few levels; the YAML parser's cost grows quadratically with depth.
pub const MAX_FLOW_DEPTH: usize = 64;

/// Rejects, in one linear pass, texts the YAML parser would take too long over: too large,
/// or flow collections nested too deep.
fn check_bounds(text: &str) -> Result<(), LocalConfigError> {
    let too = |message: String| LocalConfigError::Yaml {
        document: 0,
        message,
    };
    if text.len() > MAX_TEXT {
        return Err(too(format!(
            "{} bytes, more than the {MAX_TEXT}-byte limit",
            text.len()
        )));
    }
    let (mut depth, mut line) = (0usize, 1usize);
    let mut quote: Option<u8> = None;
    let mut comment = false;
    let mut prev = b'\n';
    for &b in text.as_bytes() {
        if b == b'\n' {
            line += 1;
            comment = false;
        } else if comment {
        } else if let Some(q) = quote {
            if b == q {
                quote = None;
            }
        } else {
            match b {
                b'"' | b'\'' => quote = Some(b),
                b'#' if prev.is_ascii_whitespace() => comment = true,
                b'[' | b'{' => {
                    depth += 1;
                    if depth > MAX_FLOW_DEPTH {
                        return Err(too(format!(
                            "line {line}: collections nested more than {MAX_FLOW_DEPTH} deep"
                        )));
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        prev = b;
    }
    Ok(())
}

/// Parses a multi-document YAML text of Kubernetes objects.
pub fn parse(text: &str) -> Result<Objects, LocalConfigError> {
    check_bounds(text)?;
    let mut objects = Objects::default();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let document = i + 1;
        let value = Value::deserialize(doc).map_err(|e| LocalConfigError::Yaml {
            document,
            message: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        if kind_of(&value) == Some("List") {
            let items = value.get("items").and_then(Value::as_sequence);
            for (j, item) in items.into_iter().flatten().enumerate() {
                objects.add(item.clone(), &format!("document {document}, items[{j}]"))?;
            }
        } else {
            objects.add(value, &format!("document {document}"))?;
        }
    }
    Ok(objects)
}

fn kind_of(value: &Value) -> Option<&str> {
    value.get("kind").and_then(Value::as_str)
}

impl Objects {
    fn add(&mut self, value: Value, place: &str) -> Result<(), LocalConfigError> {
        let Some(kind) = kind_of(&value).map(str::to_string) else {
            return Err(LocalConfigError::Invalid {
                object: format!("object ({place})"),
                field: "kind".into(),
                message: "missing".into(),
            });
        };
        let api_version = value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let meta = value.get("metadata");
        let name = meta
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("<unnamed>");
        let ns = meta
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str);
        let label = match ns {
            Some(ns) => format!("{kind} {ns}/{name} ({place})"),
            None => format!("{kind} {name} ({place})"),
        };
        let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        match (group, kind.as_str()) {
            ("", "Namespace") => self.namespaces.push(typed(value, &label)?),
            ("", "Service") => self.services.push(typed(value, &label)?),
            ("", "Pod") => self.pods.push(typed(value, &label)?),
            ("", "ConfigMap") => self.config_maps.push(typed(value, &label)?),
            ("", "Secret") => self.secrets.push(typed(value, &label)?),
            ("gateway.networking.k8s.io", "Gateway") => self.gateways.push(typed(value, &label)?),
            ("gateway.networking.k8s.io", "HTTPRoute") => {
                self.http_routes.push(typed(value, &label)?)
            }
            ("gateway.networking.k8s.io", "GRPCRoute") => {
                self.grpc_routes.push(typed(value, &label)?)
            }
            ("gateway.networking.k8s.io", "TCPRoute") => {
                self.tcp_routes.push(typed(value, &label)?)
            }
            ("security.istio.io", "RequestAuthentication") => {
                self.authentications.push(typed(value, &label)?)
            }
            ("telemetry.istio.io", "Telemetry") => self.telemetries.push(typed(value, &label)?),
            ("security.istio.io", "AuthorizationPolicy") => {
                self.policies.push(typed(value, &label)?)
            }
            ("networking.istio.io", "DestinationRule") => {
                self.destination_rules.push(typed(value, &label)?)
            }
            ("networking.istio.io", "ServiceEntry") => {
                self.service_entries.push(typed(value, &label)?)
            }
            ("gateway.networking.k8s.io", "BackendTLSPolicy") => {
                self.backend_tls_policies.push(typed(value, &label)?)
            }
            ("gateway.networking.k8s.io", "ReferenceGrant") => {
                self.grants.push(typed(value, &label)?)
            }
            _ => tracing::info!(object = %label, api_version, "skipping unsupported kind"),
        }
        Ok(())
    }
}

fn typed<T: DeserializeOwned>(value: Value, label: &str) -> Result<(String, T), LocalConfigError> {
    let parsed: T = serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        LocalConfigError::Invalid {
            object: label.to_string(),
            field: if field == "." { "<root>".into() } else { field },
            message: e.into_inner().to_string(),
        }
    })?;
    Ok((label.to_string(), parsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_nesting_is_refused_quickly() {
        let text = format!("a: {}\n", "[".repeat(200_000));
        let started = std::time::Instant::now();
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("nested more than 64 deep"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        // Brackets in strings and comments do not count.
        let fine = format!(
            "# {}\napiVersion: v1\nkind: Namespace\nmetadata: {{name: '{}'}}\n",
            "[".repeat(100),
            "[".repeat(100)
        );
        assert!(parse(&fine).is_ok());
    }

    #[test]
    fn reads_lists_and_skips_unknown_kinds() {
        let objects = parse(
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: a}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\n",
        )
        .unwrap();
        assert_eq!(objects.namespaces.len(), 1);
        assert!(objects.namespaces[0].0.contains("items[0]"));
    }

    #[test]
    fn names_object_and_field() {
        let err = parse(
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  ports:\n  - port: http\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("Service default/web (document 1): spec.ports[0].port:"),
            "{err}"
        );
    }

    #[test]
    fn reports_yaml_errors_with_document() {
        let err = parse("kind: Namespace\nmetadata: {name: a}\n---\nkind: [\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("document 2: invalid YAML"), "{err}");
    }
}
