# syntax=docker/dockerfile:1
# Multi-stage build: compile in the Rust image, run as a non-root user in a slim Debian.
#
#   docker build -t openai-cache-proxy .
#
# The runtime stage takes its binary from the stage named by BINARY_STAGE: `build` (the
# default, compiled here) or `prebuilt` (a binary named openai-cache-proxy in the build
# context). CI uses the second, with a local base image, to smoke-test the runtime stage on
# machines that cannot pull images (.ci/container-check).
ARG RUNTIME_BASE=debian:bookworm-slim
ARG BINARY_STAGE=build

FROM rust:1.95-slim-bookworm AS build
# The slim image has gcc but not make, which jemalloc's C build (tikv-jemalloc-sys) runs.
# llvm-22 is for llvm-profdata of rustc 1.95's LLVM (22), which the profile-guided build
# (.ci/release) needs. Not pinned: Debian ships it from bookworm-security, whose index holds
# only the latest version, so a pin would break the build at its next update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends make=4.3-4.1 llvm-22 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Crates first, so source edits do not download them again. (Compiled crates cannot be kept
# in a layer: every new profile changes how all of them are optimised.)
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo fetch --locked \
    && rm -rf src
# The proxy, and for its training run the bench upstream and the soak driver (tests/).
COPY src ./src
COPY tests ./tests
COPY .ci/release ./.ci/release
RUN PGO=1 bash .ci/release \
    && cp target/dist/openai-cache-proxy /openai-cache-proxy

FROM scratch AS prebuilt
COPY openai-cache-proxy /openai-cache-proxy

# hadolint ignore=DL3006
FROM ${BINARY_STAGE} AS binary

# hadolint ignore=DL3006
FROM ${RUNTIME_BASE} AS runtime
# TLS roots are compiled in (webpki-roots), so no ca-certificates package is needed;
# corporate CAs are handled by the application (EXTRA_CA_FILE), not the image.
# Not "proxy": Debian base images already have a user of that name (uid 13).
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin ocproxy
COPY --from=binary /openai-cache-proxy /usr/local/bin/openai-cache-proxy
USER 10001:10001
ENV HOST=0.0.0.0 \
    PORT=8080
EXPOSE 8080
STOPSIGNAL SIGTERM
# The binary checks itself (GET /health on $PORT), so the image needs no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/openai-cache-proxy", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/openai-cache-proxy"]
