# syntax=docker/dockerfile:1.7
#
# blobcache container image.
#
#   docker build -t blobcache:0.1.0 .
#   docker run -p 8080:8080 -v blobcache-data:/data blobcache:0.1.0
#
# Build stage: the release binary, with cargo's registry and target directory in
# BuildKit cache mounts so rebuilds after a source change recompile only the crate.
# The release profile keeps line tables for backtraces; they are compressed
# (about 150 MB -> 55 MB), not stripped.
# The runtime stage is distroless (glibc, libgcc, CA certificates, no shell, no
# package manager) and runs as the unprivileged user 65532.

ARG RUST_VERSION=1.95
ARG DEBIAN_SUITE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_SUITE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin blobcache \
    && install -D -m 0755 target/release/blobcache /out/usr/local/bin/blobcache \
    && objcopy --compress-debug-sections=zlib /out/usr/local/bin/blobcache \
    && install -d -m 0750 -o 65532 -g 65532 /out/data

# The health probe: busybox's wget applet, statically linked (about 1 MB), as the
# only tool besides blobcache in an image without a shell. `blobcache stat` would
# ask the store about a blob on every probe; liveness must not depend on the store.
FROM busybox:1.37-musl AS probe

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="blobcache" \
      org.opencontainers.image.description="A read-through HTTP blob cache, addressed by MD5, in front of object storage" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=build /out/ /
COPY --from=probe /bin/busybox /usr/local/bin/wget

# The node must listen on all interfaces in a container; its cache, spool,
# tombstones (and, without --store, the blobs themselves) live under /data.
ENV BLOBCACHE_LISTEN=0.0.0.0:8080 \
    BLOBCACHE_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8080
USER 65532:65532

# Liveness only (/healthz): /readyz also turns 503 while the store is unreachable,
# and a store outage is no reason to restart a node that still serves its cache.
# Adjust the URL if BLOBCACHE_LISTEN moves the port.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/wget", "-q", "-T", "2", "-O", "/dev/null", "http://127.0.0.1:8080/healthz"]

# SIGTERM (docker stop) drains requests and uploads within --shutdown-grace (30 s
# by default): give the container longer than that, e.g. `docker stop -t 45`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/blobcache"]
CMD ["serve"]
