# syntax=docker/dockerfile:1
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin wharf

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home /var/lib/wharf wharf \
 && mkdir -p /var/lib/wharf \
 && chown wharf /var/lib/wharf
COPY --from=build /src/target/release/wharf /usr/local/bin/wharf
COPY config/wharf.yaml /etc/wharf/wharf.yaml
USER wharf
WORKDIR /var/lib/wharf
EXPOSE 5000
ENV REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=/var/lib/wharf
ENTRYPOINT ["wharf", "--config", "/etc/wharf/wharf.yaml"]
CMD ["serve"]
HEALTHCHECK --interval=10s --timeout=3s CMD curl -fsS http://127.0.0.1:5000/readyz || exit 1
