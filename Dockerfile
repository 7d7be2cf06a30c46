# syntax=docker/dockerfile:1
#
# relay container image: built with cargo, run on distroless as non-root.
#
#   docker build -t relay:0.1.0 .
#   docker run --rm -p 3000:3000 -e RELAY_JWT_SECRET=dev-secret relay:0.1.0
#
# The binary is exactly what `cargo build --release -p relay` (part of make
# release) produces: the server alone, none of the tools in crates/relay-sim,
# built with --locked so Cargo.lock is used as committed.

ARG RUST_VERSION=1.95

# The full rust image, not -slim: the relay's allocator (jemalloc, issue #19)
# builds from C source with its gcc and make. COPY brings .cargo/config.toml,
# which holds jemalloc's compiled-in settings.
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the crate registry and target/ between builds
# (BuildKit); the binary is copied out of the cached target/ in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p relay \
    && cp target/release/relay /relay

# The release binary links glibc dynamically (and nothing else: no OpenSSL;
# jemalloc is linked in statically),
# so the "cc" distroless image (glibc, libgcc) of the same Debian release as
# the builder fits. It has no shell: the Helm chart's preStop pause uses
# Kubernetes' native sleep action.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /relay /relay
# nonroot is uid/gid 65532; the chart sets runAsUser/runAsGroup 65532 so
# the kubelet can verify runAsNonRoot.
USER nonroot
# RELAY_ADDR defaults to 0.0.0.0:3000.
EXPOSE 3000
ENTRYPOINT ["/relay"]
CMD ["serve"]
