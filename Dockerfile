# sluice container image: a cached dependency build, then a slim runtime running as a non-root user.
# Build: docker build -t sluice .
# Run:   docker run -p 6432:6432 -v $PWD/pooler.toml:/etc/sluice/pooler.toml:ro sluice

FROM rust:1-bookworm AS builder
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

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system sluice \
    && useradd --system --gid sluice --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin sluice \
    && mkdir -p /etc/sluice
COPY --from=builder /build/target/release/sluice /usr/local/bin/sluice
COPY pooler.toml.example /etc/sluice/pooler.toml.example
USER sluice:sluice
EXPOSE 6432
ENTRYPOINT ["sluice"]
CMD ["--config", "/etc/sluice/pooler.toml"]
