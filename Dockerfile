# logpipe: one binary, every role (produce, analyze, generate, broker, demo).
# Multi-stage: dependencies are built in their own cached layer (cargo-chef),
# so a source change rebuilds only logpipe; the runtime image is Debian slim,
# non-root, with `logpipe` as entrypoint.

FROM rust:1-bookworm AS chef
RUN cargo install cargo-chef --locked
WORKDIR /src

FROM chef AS plan
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=plan /src/recipe.json recipe.json
RUN cargo chef cook --release --recipe-path recipe.json --bin logpipe
COPY . .
RUN cargo build --release --bin logpipe

FROM debian:bookworm-slim
# ca-certificates follows Debian's security updates; a pinned version would
# stop building once the archive moves on.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --create-home logpipe \
    && mkdir -p /var/lib/logpipe /var/log/traffic \
    && chown logpipe /var/lib/logpipe /var/log/traffic
COPY --from=build /src/target/release/logpipe /usr/local/bin/logpipe
USER 10001
WORKDIR /home/logpipe
ENTRYPOINT ["logpipe"]
CMD ["--help"]
