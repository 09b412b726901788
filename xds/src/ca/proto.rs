//! The messages of istiod's CA service, `istio.v1.auth.IstioCertificateService` (istio/api
//! `security/v1alpha1/ca.proto`): field numbers and types as that file declares them.
//!
//! Written with prost's derive rather than generated: three messages and one unary method
//! do not justify a protoc-free code generator in the build (prost-build and tonic-build
//! are not in the dependency tree).

use envoy_types::pb::google::protobuf::Struct;

/// The gRPC service name.
pub const SERVICE: &str = "istio.v1.auth.IstioCertificateService";
/// The path of `CreateCertificate`.
pub const CREATE_CERTIFICATE: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";

/// A certificate signing request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateRequest {
    /// PEM-encoded certificate request.
    #[prost(string, tag = "1")]
    pub csr: String,
    /// Requested lifetime, in seconds.
    #[prost(int64, tag = "3")]
    pub validity_duration: i64,
    /// Optional metadata (`CertSigner`, impersonation).
    #[prost(message, optional, tag = "4")]
    pub metadata: Option<Struct>,
}

/// The signed chain.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateResponse {
    /// PEM-encoded certificates, leaf first, root last.
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: Vec<String>,
}
