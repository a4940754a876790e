# The cyclr-operator image: one static binary and the CA bundle, FROM scratch.
#   docker build -t cyclr-operator:0.1.0 .
# `make image` builds the same image without a container engine (hack/image.sh); keep the
# user, entrypoint, command and files here and there the same (tests/image.rs checks).
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bin cyclr-operator

FROM scratch
LABEL org.opencontainers.image.title="cyclr-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/cyclr-operator /cyclr-operator
USER 65532:65532
EXPOSE 8080/tcp
ENTRYPOINT ["/cyclr-operator"]
CMD ["run"]
