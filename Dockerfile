# syntax=docker/dockerfile:1
# Multi-stage build: compile in the Rust image, run as a non-root user in a slim Debian.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
# (Examples and tests live under tests/; building the binary does not need them.)
RUN mkdir -p src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin openai-cache-proxy \
    && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin openai-cache-proxy

FROM debian:bookworm-slim
# TLS roots are compiled in (webpki-roots), so no ca-certificates package is needed;
# corporate CAs are handled by the application, not the image.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin proxy
COPY --from=build /src/target/release/openai-cache-proxy /usr/local/bin/openai-cache-proxy
USER 10001:10001
ENV HOST=0.0.0.0 \
    PORT=8080
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/openai-cache-proxy"]
