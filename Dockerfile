# syntax=docker/dockerfile:1
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin wharf

FROM debian:bookworm-slim
RUN useradd --system --home /var/lib/wharf wharf && mkdir -p /var/lib/wharf && chown wharf /var/lib/wharf
COPY --from=build /src/target/release/wharf /usr/local/bin/wharf
COPY config/wharf.yaml /etc/wharf/wharf.yaml
USER wharf
EXPOSE 5000
ENV REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=/var/lib/wharf
ENTRYPOINT ["wharf", "--config", "/etc/wharf/wharf.yaml"]
CMD ["serve"]
