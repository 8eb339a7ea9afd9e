# One image for every pipeline service (generate, migrate, process, serve, lake, batch).
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake libcurl4-openssl-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin clickstream \
 && cp target/release/clickstream /usr/local/bin/clickstream

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 clickstream \
 && mkdir -p /data \
 && chown clickstream /data
COPY --from=build /usr/local/bin/clickstream /usr/local/bin/clickstream
USER clickstream
ENTRYPOINT ["clickstream"]
CMD ["--help"]
