# syntax=docker/dockerfile:1
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release -p waypoint --locked

FROM debian:bookworm-slim
RUN useradd --uid 1337 --no-create-home istio-proxy
COPY --from=build /src/target/release/waypoint /usr/local/bin/waypoint
USER 1337
# HBONE, readiness, admin (loopback only by default).
EXPOSE 15008 15021
ENTRYPOINT ["/usr/local/bin/waypoint"]
CMD ["run", "--config", "/etc/waypoint/mesh.yaml", \
     "--cert-chain", "/var/run/secrets/workload-spiffe-credentials/cert-chain.pem", \
     "--key", "/var/run/secrets/workload-spiffe-credentials/key.pem", \
     "--root-cert", "/var/run/secrets/workload-spiffe-credentials/root-cert.pem"]
