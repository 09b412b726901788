# syntax=docker/dockerfile:1
#
# Two images, one build (neither contains the test kit or the benchmark: only `-p waypoint`
# is built):
#
#   docker build --target proxyv2 --build-arg ISTIO_VERSION=1.31.0 -t REGISTRY/waypoint-proxyv2:1.31.0 .
#       istio/proxyv2 with this binary as /usr/local/bin/envoy. pilot-agent (the image's
#       ENTRYPOINT) starts it exactly as it starts Envoy. ISTIO_VERSION must equal istiod's:
#       pilot-agent reports its version to istiod, which shapes the configuration by it.
#
#   docker build --target standalone -t REGISTRY/waypoint:dev .
#       Just the binary, uid 1337, no shell: the local-file mode (`waypoint run --config`).
#
# Kubernetes manifests for both: examples/kubernetes/.

ARG ISTIO_VERSION=1.31.0

FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release -p waypoint --locked

# pilot-agent's image, with Envoy's place taken.
FROM docker.io/istio/proxyv2:${ISTIO_VERSION} AS proxyv2
COPY --from=build /src/target/release/waypoint /usr/local/bin/envoy

# The local-file mode: glibc and libgcc only (distroless), non-root.
FROM gcr.io/distroless/cc-debian12 AS standalone
COPY --from=build /src/target/release/waypoint /usr/local/bin/waypoint
USER 1337:1337
# HBONE, readiness, Prometheus; admin is loopback-only by default.
EXPOSE 15008 15021 15020
ENTRYPOINT ["/usr/local/bin/waypoint"]
CMD ["run", "--config", "/etc/waypoint/mesh.yaml", \
     "--cert-chain", "/var/run/secrets/workload-spiffe-credentials/cert-chain.pem", \
     "--key", "/var/run/secrets/workload-spiffe-credentials/key.pem", \
     "--root-cert", "/var/run/secrets/workload-spiffe-credentials/root-cert.pem"]
