//! Compiles the Envoy API protos shipped with the `envoy-types` crate into a descriptor set
//! (with `protox`, no `protoc` needed), so that Envoy resources can be converted between
//! their protobuf and JSON forms (config dumps, test fixtures) at run time.

use std::path::{Path, PathBuf};

/// The resource and extension types the waypoint reads, writes or dumps.
const ROOTS: &[&str] = &[
    "envoy/service/discovery/v3/discovery.proto",
    "envoy/admin/v3/config_dump.proto",
    "envoy/config/bootstrap/v3/bootstrap.proto",
    "envoy/config/listener/v3/listener.proto",
    "envoy/config/cluster/v3/cluster.proto",
    "envoy/config/endpoint/v3/endpoint.proto",
    "envoy/config/route/v3/route.proto",
    "envoy/config/trace/v3/opentelemetry.proto",
    "envoy/extensions/transport_sockets/tls/v3/tls.proto",
    "envoy/extensions/transport_sockets/tls/v3/secret.proto",
    "envoy/extensions/transport_sockets/internal_upstream/v3/internal_upstream.proto",
    "envoy/extensions/transport_sockets/raw_buffer/v3/raw_buffer.proto",
    "envoy/extensions/transport_sockets/proxy_protocol/v3/upstream_proxy_protocol.proto",
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto",
    "envoy/extensions/filters/network/rbac/v3/rbac.proto",
    "envoy/extensions/filters/http/rbac/v3/rbac.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    "envoy/extensions/filters/http/cors/v3/cors.proto",
    "envoy/extensions/filters/http/fault/v3/fault.proto",
    "envoy/extensions/filters/http/grpc_stats/v3/config.proto",
    "envoy/extensions/filters/http/jwt_authn/v3/config.proto",
    "envoy/extensions/filters/http/ext_authz/v3/ext_authz.proto",
    "envoy/extensions/filters/network/ext_authz/v3/ext_authz.proto",
    "envoy/extensions/filters/http/set_filter_state/v3/set_filter_state.proto",
    "envoy/extensions/filters/network/set_filter_state/v3/set_filter_state.proto",
    "envoy/extensions/filters/listener/original_dst/v3/original_dst.proto",
    "envoy/extensions/filters/listener/http_inspector/v3/http_inspector.proto",
    "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto",
    "envoy/extensions/matching/common_inputs/network/v3/network_inputs.proto",
    "envoy/extensions/path/match/uri_template/v3/uri_template_match.proto",
    "envoy/extensions/access_loggers/file/v3/file.proto",
    "envoy/extensions/access_loggers/stream/v3/stream.proto",
    "envoy/extensions/access_loggers/open_telemetry/v3/logs_service.proto",
    "envoy/extensions/access_loggers/grpc/v3/als.proto",
    "envoy/extensions/access_loggers/filters/cel/v3/cel.proto",
    "envoy/extensions/retry/host/previous_hosts/v3/previous_hosts.proto",
    "envoy/extensions/request_id/uuid/v3/uuid.proto",
    "envoy/extensions/http/header_formatters/preserve_case/v3/preserve_case.proto",
    "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
    "envoy/extensions/load_balancing_policies/round_robin/v3/round_robin.proto",
    "envoy/extensions/load_balancing_policies/least_request/v3/least_request.proto",
    "xds/type/matcher/v3/ip.proto",
    "xds/type/matcher/v3/matcher.proto",
    "udpa/type/v1/typed_struct.proto",
    "xds/type/v3/typed_struct.proto",
    "stats/plugin_config.proto",
];

/// Files whose relative type name `common.dynamic_forward_proxy.v3.DnsCacheConfig` would
/// resolve, under protobuf's scoping rules, into a sibling `common` package their own
/// imports define (`envoy.extensions.filters.common`, `envoy.extensions.clusters.common`);
/// [`Qualifying`] reads them with that name fully qualified, as the API means it.
const QUALIFIED: &[&str] = &[
    "envoy/extensions/filters/http/dynamic_forward_proxy/v3/dynamic_forward_proxy.proto",
    "envoy/extensions/clusters/dynamic_forward_proxy/v3/cluster.proto",
    "envoy/extensions/filters/network/sni_dynamic_forward_proxy/v3/sni_dynamic_forward_proxy.proto",
];

/// Opens files from the include directories, qualifying the DNS cache type in
/// [`QUALIFIED`].
struct Qualifying {
    api: PathBuf,
    chain: protox::file::ChainFileResolver,
}

impl protox::file::FileResolver for Qualifying {
    fn open_file(&self, name: &str) -> Result<protox::file::File, protox::Error> {
        if !QUALIFIED.contains(&name) {
            return self.chain.open_file(name);
        }
        let text = std::fs::read_to_string(self.api.join(name))
            .map_err(|e| protox::Error::new(format!("{name}: {e}")))?
            .replace(
                " common.dynamic_forward_proxy.v3.DnsCacheConfig ",
                " .envoy.extensions.common.dynamic_forward_proxy.v3.DnsCacheConfig ",
            );
        protox::file::File::from_source(name, &text)
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=WAYPOINT_ENVOY_PROTO_DIR");
    let proto = proto_dir();
    let own =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("manifest dir")).join("proto");
    println!("cargo:rerun-if-changed={}", own.display());
    let includes = [
        own,
        proto.join("data-plane-api"),
        proto.join("xds"),
        proto.join("protoc-gen-validate"),
        proto.join("googleapis"),
        proto.join("cel-spec"),
        proto.join("opentelemetry-proto"),
        proto.join("client_model"),
    ];
    let mut chain = protox::file::ChainFileResolver::new();
    for include in &includes {
        chain.add(protox::file::IncludeFileResolver::new(include.clone()));
    }
    chain.add(protox::file::GoogleFileResolver::new());
    let resolver = Qualifying {
        api: proto.join("data-plane-api"),
        chain,
    };
    let fds = protox::Compiler::with_file_resolver(resolver)
        .include_source_info(true)
        .include_imports(true)
        .open_files(ROOTS.iter().chain(QUALIFIED))
        .map(|c| c.file_descriptor_set())
        .unwrap_or_else(|e| panic!("compiling Envoy protos in {}: {e:?}", proto.display()));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    // A new file, not the old one rewritten in place: a target directory seeded with hard
    // links would otherwise change every linked copy.
    let path = out.join("envoy.bin");
    let _ = std::fs::remove_file(&path);
    std::fs::write(&path, prost::Message::encode_to_vec(&fds)).expect("write descriptor set");
}

/// The `proto/` directory of the `envoy-types` version in Cargo.lock, in the cargo
/// registry (or `WAYPOINT_ENVOY_PROTO_DIR`).
fn proto_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("WAYPOINT_ENVOY_PROTO_DIR") {
        return PathBuf::from(dir);
    }
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let lock = std::fs::read_to_string(manifest.join("../Cargo.lock")).expect("read Cargo.lock");
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"envoy-types\""))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
        .map(|v| v.trim_end_matches('"').to_string())
        .expect("envoy-types in Cargo.lock");
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cargo"));
    let registry = home.join("registry/src");
    let found = std::fs::read_dir(&registry)
        .unwrap_or_else(|e| panic!("{}: {e}; set WAYPOINT_ENVOY_PROTO_DIR", registry.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.path().join(format!("envoy-types-{version}/proto")))
        .find(|p| Path::new(p).is_dir());
    found.unwrap_or_else(|| {
        panic!(
            "envoy-types-{version}/proto not found under {}; set WAYPOINT_ENVOY_PROTO_DIR",
            registry.display()
        )
    })
}
