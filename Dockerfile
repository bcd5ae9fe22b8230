# tailguard container image, the second path: scripts/image.sh builds the same image without a
# Docker engine (and is what CI builds, checks for reproducibility and smoke-runs). Both run
# scripts/static-binary.sh, so both ship the same binary: a static (musl) release build with
# cargo-auditable, on an empty base image.
#
#   docker build -t tailguard:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 -t <registry>/tailguard:0.1.0 --push .
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts. Each platform is
# built natively (under emulation for a foreign one), so no cross toolchain is involved.
# The image holds /tailguard and /etc/passwd, /etc/group for its user, and nothing else; it runs
# as UID/GID 65532, which the Helm chart's podSecurityContext also sets (runAsNonRoot, read-only
# root filesystem).

# Cargo.toml's rust-version.
ARG RUST_VERSION=1.89

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# static-binary.sh adds the musl target, installs musl-tools and cargo-auditable, and builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    --mount=type=cache,target=/root/.cache/tailguard \
    eval "$(scripts/static-binary.sh)" \
 && install -D -m 0755 "$TAILGUARD_STATIC_BIN" /out/tailguard \
 && printf 'nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n' > /out/passwd \
 && printf 'nonroot:x:65532:\n' > /out/group

FROM scratch
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="tailguard" \
      org.opencontainers.image.description="Admission webhook and linter for Tailscale workloads on Kubernetes" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/passwd /etc/passwd
COPY --from=build /out/group /etc/group
COPY --from=build /out/tailguard /tailguard
USER 65532:65532
# 8443: the webhook (HTTPS: /validate, /mutate). 8080: /healthz, /readyz, /metrics (plain HTTP).
EXPOSE 8443 8080
ENTRYPOINT ["/tailguard"]
CMD ["serve"]
