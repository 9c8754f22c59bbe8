# Multi-stage build of the one binary; the runtime image holds it and `ip` (for the agent's
# set-up step), nothing else of ours.
#   docker build -t pod-identity-webhook:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin pod-identity-webhook

FROM debian:bookworm-slim
# `ip`, for the agent's one-shot set-up step (manifests/agent: the link-local address).
RUN apt-get update \
    && apt-get install -y --no-install-recommends iproute2 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/pod-identity-webhook /usr/local/bin/pod-identity-webhook
# The same non-root uid the manifests run as; the root filesystem can be read-only.
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["/usr/local/bin/pod-identity-webhook"]
CMD ["serve", "--listen=0.0.0.0:8443", "--cert-dir=/etc/pod-identity-webhook/tls", "--source=kubernetes", "--log-format=json"]
