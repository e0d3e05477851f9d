# sluice container image: a cached dependency build, then a slim runtime that runs sluice as a
# non-root user (uid/gid 10001, numeric so that runAsNonRoot policies can check it).
# Build: docker build -t sluice .
# Run:   docker run -p 127.0.0.1:6432:6432 -v $PWD/docker/pooler.toml:/etc/sluice/pooler.toml:ro sluice
# docker-compose.yml runs it in front of PostgreSQL with the metrics endpoint and a healthcheck.

# The toolchain of Cargo.toml's rust-version (the only one sluice has been built with).
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /build

# Dependencies first, against placeholder sources, so that this layer is rebuilt only when
# Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src target/release/.fingerprint/sluice-* target/release/deps/sluice-* \
        target/release/deps/libsluice-* target/release/sluice

# Then sluice itself (touch: COPY keeps the files' old mtimes, which must not look older than the
# placeholder build).
COPY src ./src
RUN find src -type f -exec touch {} + \
    && cargo build --release --locked \
    && strip target/release/sluice

# The runtime needs only glibc: jemalloc is linked in, TLS is rustls, and CA files are named in
# the configuration (no system certificate store is read), so nothing is installed with apt.
FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 sluice \
    && useradd --system --uid 10001 --gid sluice --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin sluice \
    && mkdir -p /etc/sluice /usr/share/doc/sluice
COPY --from=builder /build/target/release/sluice /usr/bin/sluice
COPY pooler.toml.example LICENSE-MIT LICENSE-APACHE /usr/share/doc/sluice/
USER 10001:10001
# 6432: PostgreSQL clients; 9127: /metrics and /health when [metrics] listen is set.
EXPOSE 6432 9127
# SIGINT: stop accepting, let open transactions finish, then exit (docker stop waits 10 s
# unless given --time / stop_grace_period).
STOPSIGNAL SIGINT
ENTRYPOINT ["sluice"]
CMD ["--config", "/etc/sluice/pooler.toml"]
