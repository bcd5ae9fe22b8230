# tailguard container image: a static (musl) release build of the binary on an empty base image.
#
#   docker build -t tailguard:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 -t <registry>/tailguard:0.1.0 --push .
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts. Each platform is
# built natively (under emulation for a foreign one), so no cross toolchain is involved.
# The image holds /tailguard and nothing else; it runs as UID/GID 65532, which the Helm
# chart's podSecurityContext also sets (runAsNonRoot, read-only root filesystem).

# Cargo.toml's rust-version.
ARG RUST_VERSION=1.89

FROM rust:${RUST_VERSION}-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
# x86_64-unknown-linux-musl or aarch64-unknown-linux-musl, whichever this platform is.
RUN echo "$(uname -m)-unknown-linux-musl" > /rust-target \
 && rustup target add "$(cat /rust-target)"
# ring (rustls' crypto) compiles C and assembly for the target: use musl's compiler wrapper.
# Symbols are stripped to keep the image small.
ENV TARGET_CC=musl-gcc \
    CARGO_PROFILE_RELEASE_STRIP=symbols
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(cat /rust-target)" \
 && cargo build --release --locked --target "$target" --bin tailguard \
 && install -D -m 0755 "target/$target/release/tailguard" /out/tailguard \
 && /out/tailguard --version

FROM scratch
LABEL org.opencontainers.image.title="tailguard" \
      org.opencontainers.image.description="Admission webhook and linter for Tailscale workloads on Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/tailguard /tailguard
USER 65532:65532
# 8443: the webhook (HTTPS: /validate, /mutate). 8080: /healthz, /readyz, /metrics (plain HTTP).
EXPOSE 8443 8080
ENTRYPOINT ["/tailguard"]
CMD ["serve"]
