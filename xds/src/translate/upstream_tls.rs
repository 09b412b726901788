//! TLS inside the `internal_upstream` transport socket of a waypoint's `inbound-vip`
//! cluster (istiod's `buildWaypointTLSContext`, `cluster_waypoint.go`; the context from
//! `constructUpstreamTLS`, `cluster_tls.go`): DestinationRule `tls` SIMPLE or MUTUAL.
//!
//! istiod names the files pilot-agent serves over SDS: `file-root:<ca.pem>` (or
//! `file-root:system` without `caCertificates`) and `file-cert:<cert.pem>~<key.pem>`. The
//! waypoint runs in the same pod and reads those files itself. An empty validation context
//! (no CA, or `insecureSkipVerify`) verifies nothing, as in Envoy.
//!
//! A BackendTLSPolicy becomes a DestinationRule `tls` with `credentialName:
//! configmap://<ns>/<name>` (`BackendTLSPolicyCollection`,
//! pilot/pkg/config/kube/gateway/backend_policies.go), and its validation context the
//! secret `configmap://<ns>/<name>-cacert` fetched over ADS
//! (`ApplyCustomSDSToClientCommonTLSContext`, pilot/pkg/security/model/authentication.go).
//! A DestinationRule `credentialName` names a Kubernetes Secret: istiod writes
//! `kubernetes://<name>` as the client certificate's secret (MUTUAL) and
//! `kubernetes://<name>-cacert` as the roots' (unless `insecureSkipVerify`), both over ADS
//! (`ConstructSdsSecretConfigForCredential` and `ToResourceName`,
//! pilot/pkg/model/credentials/resource.go). The waypoint subscribes to those secrets on
//! its ADS stream and uses what istiod sends ([`super::secret`]); until a secret arrives,
//! and for istiod's `invalid://` (an unresolvable reference), every handshake fails.
//! A validation context's `crl` (istiod: the rule's `caCrl` as a file name in the default
//! validation context next to `file-root:<ca>`, `constructUpstreamTLS`; or a Secret's
//! `ca.crl` inline in the `-cacert` secret, `toEnvoyCaSecret`) is checked with the chain;
//! a secret's CRL replaces the default context's, as Envoy merges the two.
//! Secrets from another SDS server (`sds://` with a credential socket), pinning and TLS
//! parameters are refused by field.

use std::path::PathBuf;

use envoy_types::pb::envoy::config::core::v3::{
    config_source::ConfigSourceSpecifier, data_source::Specifier, DataSource,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, CertificateValidationContext, CommonTlsContext,
    SdsSecretConfig, TlsParameters, UpstreamTlsContext,
};
use filters::model::{ClientCertificate, Crl, TlsRoots, UpstreamTls};

use super::Bad;

/// The cluster-level SNI and SAN settings (`HttpProtocolOptions.upstream_http_protocol_options`).
#[derive(Debug, Clone, Copy, Default)]
pub struct AutoSettings {
    /// `auto_sni`: the request's host as SNI.
    pub auto_sni: bool,
    /// `auto_san_validation`: the certificate must cover that SNI.
    pub auto_san_validation: bool,
}

/// istiod's prefix for a CA bundle from a ConfigMap, served over ADS.
pub const CONFIG_MAP_SECRET: &str = "configmap://";
/// istiod's prefix for a Secret in the waypoint's namespace, served over ADS.
pub const KUBERNETES_SECRET: &str = "kubernetes://";

/// The ADS secrets a TLS context names; their material is filled in when the snapshot is
/// built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSecrets {
    /// The secret whose CA bundle verifies the server.
    pub roots: Option<String>,
    /// The secret whose certificate and key the waypoint presents.
    pub certificate: Option<String>,
}
/// istiod's name for a reference it could not resolve (traffic must fail).
const INVALID_SECRET: &str = "invalid://";

/// Converts an `UpstreamTlsContext`; with it, the ADS secrets whose CA bundle and client
/// certificate replace the (empty, never usable) roots and certificate once they arrive.
pub fn convert(
    ctx: &UpstreamTlsContext,
    auto: AutoSettings,
) -> Result<(UpstreamTls, TlsSecrets), Bad> {
    let bad = |field: &str, reason: &str| (field.to_string(), reason.to_string());
    if ctx.allow_renegotiation {
        return Err(bad(
            "allow_renegotiation",
            "TLS renegotiation is not supported",
        ));
    }
    let common = ctx.common_tls_context.clone().unwrap_or_default();
    check_common(&common)?;
    let (client_certificate, certificate_secret) = client_certificate(&common)?;
    let Validation {
        roots,
        sans: subject_alt_names,
        secret: root_secret,
        crl,
        crl_leaf_only,
    } = validation(&common)?;
    let tls = UpstreamTls {
        sni: (!ctx.sni.is_empty()).then(|| ctx.sni.clone()),
        auto_sni: auto.auto_sni || ctx.auto_host_sni,
        auto_san_validation: roots != TlsRoots::Insecure
            && (auto.auto_san_validation || ctx.auto_sni_san_validation),
        subject_alt_names,
        roots,
        crl,
        crl_leaf_only,
        client_certificate,
        alpn: common.alpn_protocols.clone(),
    };
    Ok((
        tls,
        TlsSecrets {
            roots: root_secret,
            certificate: certificate_secret,
        },
    ))
}

fn check_common(c: &CommonTlsContext) -> Result<(), Bad> {
    if let Some(p) = &c.tls_params {
        check_params(p)?;
    }
    let set = [
        (
            "tls_certificate_provider_instance",
            c.tls_certificate_provider_instance.is_some(),
        ),
        (
            "custom_tls_certificate_selector",
            c.custom_tls_certificate_selector.is_some(),
        ),
        ("custom_handshaker", c.custom_handshaker.is_some()),
        ("key_log", c.key_log.is_some()),
    ];
    match set.iter().find(|(_, on)| *on) {
        Some((field, _)) => Err((
            format!("common_tls_context.{field}"),
            "not supported for TLS origination".into(),
        )),
        None => Ok(()),
    }
}

/// `tls_params`: the versions istiod always writes (`defaultUpstreamCommonTLSContext`,
/// cluster_tls.go: TLS 1.2 to 1.3) are the waypoint's own; narrower versions, cipher
/// suites, curves and signature algorithms are refused by field.
fn check_params(p: &TlsParameters) -> Result<(), Bad> {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::tls_parameters::TlsProtocol;
    let at = "common_tls_context.tls_params";
    let min = p.tls_minimum_protocol_version;
    let max = p.tls_maximum_protocol_version;
    if ![TlsProtocol::TlsAuto as i32, TlsProtocol::TlSv12 as i32].contains(&min) {
        return Err((
            format!("{at}.tls_minimum_protocol_version"),
            "only TLS_AUTO or TLSv1_2 (the waypoint speaks TLS 1.2 and 1.3)".into(),
        ));
    }
    if ![TlsProtocol::TlsAuto as i32, TlsProtocol::TlSv13 as i32].contains(&max) {
        return Err((
            format!("{at}.tls_maximum_protocol_version"),
            "only TLS_AUTO or TLSv1_3 (the waypoint speaks TLS 1.2 and 1.3)".into(),
        ));
    }
    let rest = TlsParameters {
        tls_minimum_protocol_version: 0,
        tls_maximum_protocol_version: 0,
        ..p.clone()
    };
    if rest != TlsParameters::default() {
        return Err((
            at.to_string(),
            "cipher suites, curves and signature algorithms are not supported for TLS origination"
                .into(),
        ));
    }
    Ok(())
}

/// The client certificate: inline file names, istiod's `file-cert:<cert>~<key>` secret, or
/// a `kubernetes://` secret over ADS (with its name; empty until it arrives).
fn client_certificate(
    c: &CommonTlsContext,
) -> Result<(Option<ClientCertificate>, Option<String>), Bad> {
    let at = "common_tls_context";
    match (
        &c.tls_certificates[..],
        &c.tls_certificate_sds_secret_configs[..],
    ) {
        ([], []) => Ok((None, None)),
        ([one], []) => {
            let file = |d: &Option<DataSource>, field: &str| match d
                .as_ref()
                .and_then(|d| d.specifier.as_ref())
            {
                Some(Specifier::Filename(f)) => Ok(PathBuf::from(f)),
                _ => Err((
                    format!("{at}.tls_certificates[0].{field}"),
                    "only a filename is supported".to_string(),
                )),
            };
            Ok((
                Some(ClientCertificate::Files {
                    certificate: file(&one.certificate_chain, "certificate_chain")?,
                    private_key: file(&one.private_key, "private_key")?,
                }),
                None,
            ))
        }
        ([], [one]) => {
            if over_ads(one) && is_kubernetes_secret(&one.name) {
                return Ok((
                    Some(ClientCertificate::Pem {
                        chain: String::new(),
                        key: Default::default(),
                    }),
                    Some(one.name.clone()),
                ));
            }
            let Some((cert, key)) = one
                .name
                .strip_prefix("file-cert:")
                .and_then(|p| p.split_once('~'))
            else {
                return Err(secret_error(
                    one,
                    &format!("{at}.tls_certificate_sds_secret_configs[0]"),
                ));
            };
            Ok((
                Some(ClientCertificate::Files {
                    certificate: cert.into(),
                    private_key: key.into(),
                }),
                None,
            ))
        }
        _ => Err((
            at.to_string(),
            "exactly one client certificate is supported".into(),
        )),
    }
}

/// Whether the secret comes over the ADS stream.
fn over_ads(s: &SdsSecretConfig) -> bool {
    matches!(
        s.sds_config
            .as_ref()
            .and_then(|c| c.config_source_specifier.as_ref()),
        Some(ConfigSourceSpecifier::Ads(_))
    )
}

/// `kubernetes://<name>` or `kubernetes://<namespace>/<name>` (istiod's
/// `ParseResourceName`).
fn is_kubernetes_secret(name: &str) -> bool {
    name.strip_prefix(KUBERNETES_SECRET)
        .is_some_and(|rest| !rest.is_empty() && rest.split('/').all(|p| !p.is_empty()))
}

fn secret_error(s: &SdsSecretConfig, at: &str) -> Bad {
    (
        format!("{at}.name"),
        format!(
            "SDS secret {:?} is not supported: only the files istiod names `file-cert:`/`file-root:` (DestinationRule caCertificates, clientCertificate, privateKey), and over ADS Kubernetes Secrets (`kubernetes://`, DestinationRule credentialName) and ConfigMap CA bundles (`configmap://`, BackendTLSPolicy)",
            s.name
        ),
    )
}

/// How the server is verified: the roots, the SANs, the ADS secret the roots come from,
/// and the revocation lists.
struct Validation {
    roots: TlsRoots,
    sans: Vec<String>,
    secret: Option<String>,
    crl: Option<Crl>,
    crl_leaf_only: bool,
}

/// The checks a validation context asks for besides its roots.
struct Checks {
    sans: Vec<String>,
    crl: Option<Crl>,
    crl_leaf_only: bool,
}

/// The roots, SANs and revocation lists to verify the server with.
fn validation(c: &CommonTlsContext) -> Result<Validation, Bad> {
    let at = "common_tls_context";
    let (roots, checks, secret, crl_at) = match &c.validation_context_type {
        None => (
            TlsRoots::Insecure,
            Checks {
                sans: Vec::new(),
                crl: None,
                crl_leaf_only: false,
            },
            None,
            String::new(),
        ),
        Some(ValidationContextType::ValidationContext(v)) => {
            let base = format!("{at}.validation_context");
            let checks = check_validation(v, &base)?;
            let roots = match &v.trusted_ca {
                None => TlsRoots::Insecure,
                Some(d) => data_roots(d, &format!("{base}.trusted_ca"))?,
            };
            (roots, checks, None, base)
        }
        Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => {
            let (roots, secret) =
                secret_root(s, &format!("{at}.validation_context_sds_secret_config"))?;
            let checks = Checks {
                sans: Vec::new(),
                crl: None,
                crl_leaf_only: false,
            };
            (roots, checks, secret, String::new())
        }
        Some(ValidationContextType::CombinedValidationContext(cv)) => {
            let base = format!("{at}.combined_validation_context");
            let default = cv.default_validation_context.clone().unwrap_or_default();
            let default_at = format!("{base}.default_validation_context");
            let checks = check_validation(&default, &default_at)?;
            let (roots, secret) = match (
                &cv.validation_context_sds_secret_config,
                &default.trusted_ca,
            ) {
                (Some(s), None) => {
                    secret_root(s, &format!("{base}.validation_context_sds_secret_config"))?
                }
                (None, Some(d)) => (data_roots(d, &format!("{default_at}.trusted_ca"))?, None),
                (None, None) => (TlsRoots::Insecure, None),
                (Some(_), Some(_)) => {
                    return Err((base, "both an SDS root secret and trusted_ca".into()))
                }
            };
            (roots, checks, secret, default_at)
        }
        Some(other) => {
            return Err((
                format!("{at}.validation_context_type"),
                format!("{other:?} is not supported"),
            ))
        }
    };
    if checks.crl.is_some() && roots == TlsRoots::Insecure {
        // Envoy refuses a CRL it has no trusted CA to check it with.
        return Err((
            format!("{crl_at}.crl"),
            "a CRL without trusted CA certificates".into(),
        ));
    }
    Ok(Validation {
        roots,
        sans: checks.sans,
        secret,
        crl: checks.crl,
        crl_leaf_only: checks.crl_leaf_only,
    })
}

/// The roots an SDS secret names: a file pilot-agent would serve (`file-root:`), or a
/// ConfigMap's or Secret's CA bundle istiod serves over ADS (roots that verify nothing
/// until it arrives), or istiod's `invalid://` (never).
fn secret_root(s: &SdsSecretConfig, at: &str) -> Result<(TlsRoots, Option<String>), Bad> {
    let over_ads = over_ads(s);
    if over_ads && (s.name.starts_with(CONFIG_MAP_SECRET) || is_kubernetes_secret(&s.name)) {
        return Ok((TlsRoots::Pem(String::new()), Some(s.name.clone())));
    }
    if over_ads && s.name.starts_with(INVALID_SECRET) {
        return Ok((TlsRoots::Pem(String::new()), None));
    }
    Ok((file_root(s, at)?, None))
}

fn file_root(s: &SdsSecretConfig, at: &str) -> Result<TlsRoots, Bad> {
    match s.name.strip_prefix("file-root:") {
        Some("system") => Ok(TlsRoots::System),
        Some(path) if !path.is_empty() => Ok(TlsRoots::File(path.into())),
        _ => Err(secret_error(s, at)),
    }
}

fn data_roots(d: &DataSource, at: &str) -> Result<TlsRoots, Bad> {
    match &d.specifier {
        Some(Specifier::Filename(f)) => Ok(TlsRoots::File(f.into())),
        Some(Specifier::InlineString(s)) => Ok(TlsRoots::Pem(s.clone())),
        Some(Specifier::InlineBytes(b)) => {
            Ok(TlsRoots::Pem(String::from_utf8_lossy(b).into_owned()))
        }
        _ => Err((
            at.to_string(),
            "only a filename or inline PEM is supported".into(),
        )),
    }
}

/// The exact SANs to require (istiod writes the deprecated untyped list; the typed one is
/// read too, any SAN type) and the revocation lists; every other verification option is
/// refused.
#[allow(deprecated)]
fn check_validation(v: &CertificateValidationContext, at: &str) -> Result<Checks, Bad> {
    let unsupported = [
        (
            "verify_certificate_spki",
            !v.verify_certificate_spki.is_empty(),
        ),
        (
            "verify_certificate_hash",
            !v.verify_certificate_hash.is_empty(),
        ),
        ("allow_expired_certificate", v.allow_expired_certificate),
        ("max_verify_depth", v.max_verify_depth.is_some()),
        (
            "require_signed_certificate_timestamp",
            v.require_signed_certificate_timestamp.is_some(),
        ),
        ("trust_chain_verification", v.trust_chain_verification != 0),
        (
            "custom_validator_config",
            v.custom_validator_config.is_some(),
        ),
        (
            "ca_certificate_provider_instance",
            v.ca_certificate_provider_instance.is_some(),
        ),
        ("system_root_certs", v.system_root_certs.is_some()),
        ("watched_directory", v.watched_directory.is_some()),
    ];
    if let Some((field, _)) = unsupported.iter().find(|(_, on)| *on) {
        return Err((
            format!("{at}.{field}"),
            "not supported for TLS origination".into(),
        ));
    }
    use envoy_types::pb::envoy::r#type::matcher::v3::{
        string_matcher::MatchPattern, StringMatcher,
    };
    let exact = |m: Option<&StringMatcher>, field: String| match m {
        Some(StringMatcher {
            match_pattern: Some(MatchPattern::Exact(e)),
            ignore_case: false,
        }) => Ok(e.clone()),
        _ => Err((
            field,
            "only exact, case-sensitive SANs are supported (istiod writes exact)".to_string(),
        )),
    };
    let untyped = v
        .match_subject_alt_names
        .iter()
        .enumerate()
        .map(|(i, m)| exact(Some(m), format!("{at}.match_subject_alt_names[{i}]")));
    let typed = v
        .match_typed_subject_alt_names
        .iter()
        .enumerate()
        .map(|(i, m)| {
            exact(
                m.matcher.as_ref(),
                format!("{at}.match_typed_subject_alt_names[{i}].matcher"),
            )
        });
    let sans = untyped.chain(typed).collect::<Result<_, _>>()?;
    let crl = match &v.crl {
        None => None,
        Some(d) => crl_source(d, &format!("{at}.crl"))?,
    };
    Ok(Checks {
        sans,
        // Also for a CRL a secret brings (Envoy merges the secret into this context).
        crl_leaf_only: v.only_verify_leaf_cert_crl,
        crl,
    })
}

/// A `crl` data source: a file the waypoint reads (istiod's `caCrl`, a path in the pod), or
/// inline PEM, checked now. Empty inline text is no list, as Envoy reads it.
fn crl_source(d: &DataSource, at: &str) -> Result<Option<Crl>, Bad> {
    let pem = match &d.specifier {
        Some(Specifier::Filename(f)) if !f.is_empty() => return Ok(Some(Crl::File(f.into()))),
        Some(Specifier::InlineString(s)) => s.clone(),
        Some(Specifier::InlineBytes(b)) => String::from_utf8_lossy(b).into_owned(),
        _ => {
            return Err((
                at.to_string(),
                "only a filename or inline PEM is supported".into(),
            ))
        }
    };
    Ok(check_crls(&pem)
        .map_err(|e| (at.to_string(), e))?
        .then_some(Crl::Pem(pem)))
}

/// Whether PEM text holds revocation lists (false: empty text), each one usable for
/// checking: an `X509 CRL` block webpki parses (v2, not a delta CRL).
pub(crate) fn check_crls(pem: &str) -> Result<bool, String> {
    if pem.trim().is_empty() {
        return Ok(false);
    }
    let mut found = 0;
    for der in rustls_pemfile::crls(&mut pem.as_bytes()) {
        let der = der.map_err(|e| format!("not PEM: {e}"))?;
        webpki::OwnedCertRevocationList::from_der(der.as_ref())
            .map_err(|e| format!("unusable CRL: {e}"))?;
        found += 1;
    }
    if found == 0 {
        return Err("no X509 CRL block".into());
    }
    Ok(true)
}
