# syntax=docker/dockerfile:1
#
# Release image of waba-migrator.
#   docker build -t waba-migrator .
#   docker run --rm -p 8080:8080 -e DATABASE_URL=... -e ENCRYPTION_KEY=... waba-migrator
#   docker run --rm -e DATABASE_URL=... -e ENCRYPTION_KEY=... -e META_ACCESS_TOKEN=... \
#     waba-migrator worker     # workers only; /healthz, /readyz and /metrics on :8080
#
# cargo-chef builds the dependencies in their own layer (planner -> cook -> build), so a change
# to our sources only rebuilds our crate. The runtime image is distroless (glibc, CA certificates,
# no shell, no package manager) and runs as the non-root user `nonroot`; the binary uses rustls,
# so it needs no libssl. There is no PostgreSQL in this image: set DATABASE_URL.
# For production, pin both base images by digest (`docker buildx imagetools inspect <image>`).

FROM rust:1.95-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin waba-migrator
# All of the context (.dockerignore leaves out target/, .data/, .git/): the build embeds
# locales/*/client_page.ftl, assets/ and migrations/ into the binary, which needs nothing else.
COPY . .
# Queries are runtime-checked (no sqlx macros), so no database is needed at build time;
# SQLX_OFFLINE guards against one being reached by accident.
ENV SQLX_OFFLINE=true
RUN cargo build --release --locked --bin waba-migrator \
    && cp target/release/waba-migrator /usr/local/bin/waba-migrator

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=builder /usr/local/bin/waba-migrator /usr/local/bin/waba-migrator
USER nonroot
EXPOSE 8080
ENV BIND_ADDR=0.0.0.0:8080
# distroless has no curl: the binary checks its own health endpoint (`serve` and `worker` both
# serve /healthz on BIND_ADDR).
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/waba-migrator", "healthcheck", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["/usr/local/bin/waba-migrator"]
CMD ["serve"]
