# Minimal image of the logpipe binary (the stack issue refines it).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin logpipe

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 logpipe
COPY --from=build /src/target/release/logpipe /usr/local/bin/logpipe
USER logpipe
WORKDIR /home/logpipe
ENTRYPOINT ["logpipe"]
