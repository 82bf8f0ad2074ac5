# The loader image: backendtls-loader plus both builds of the filter (the proxy-wasm module and the
# Envoy dynamic module), which docker-compose.yaml hands to Envoy through a shared volume.
#
# By default it serves ADS on 0.0.0.0:18000 over mutual TLS with the certificates mounted at /xds
# (server.crt, server.key, ca.crt, as `backendtls-loader certs --out-dir DIR` writes them);
# docker-compose.yaml makes them with its xds-certs service.
#
#   docker build -t backendtls-loader:dev .          (docker compose up does this for you)
#
# Needs BuildKit (the default builder since Docker Engine 23 and in Docker Desktop) for the cache
# mounts, which keep crates.io downloads and compiled dependencies between builds.

FROM rust:1-bookworm AS build
RUN rustup target add wasm32-wasip1
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    set -eux; \
    cargo fetch --locked; \
    cargo build --release --locked -p backendtls-loader; \
    cargo build --release --locked -p backendtls-filter; \
    cargo build --release --locked -p backendtls-filter --target wasm32-wasip1; \
    mkdir -p /out; \
    cp target/release/backendtls-loader \
       target/release/libbackendtls_filter.so \
       target/wasm32-wasip1/release/backendtls_filter.wasm /out/

# Same Debian release as the builder: the dynamic module is loaded by Envoy, not by this image,
# but building on bookworm keeps its glibc requirement at what bookworm has (see README).
FROM debian:bookworm-slim
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates; \
    rm -rf /var/lib/apt/lists/*; \
    groupadd --system --gid 10001 backendtls; \
    useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin backendtls; \
    mkdir -p /config /filters /xds; \
    chown backendtls:backendtls /filters
COPY --from=build /out/backendtls-loader /usr/local/bin/backendtls-loader
COPY --from=build /out/backendtls_filter.wasm /out/libbackendtls_filter.so /usr/local/lib/backendtls/
USER backendtls
EXPOSE 18000 18001
ENTRYPOINT ["backendtls-loader"]
CMD ["serve", "--config-dir", "/config", "--xds-address", "0.0.0.0:18000", "--xds-certs", "/xds", "--admin-address", "0.0.0.0:18001", "--listener-address", "0.0.0.0"]
