# EFS container image: efs-server, efsctl and efs on Debian bookworm, run as a non-root user.
# See docs/docker.md. Build: docker build -t efs-server .
#
# (Not built on the development machines: they have no Docker engine. The entrypoint script is
# tested outside Docker by crates/efs-server/tests/docker_entrypoint.rs.)

# --- build stage -------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin efs-server --bin efsctl --bin efs \
 && install -d /out \
 && install -m 0755 target/release/efs-server target/release/efsctl target/release/efs /out/

# --- runtime stage -----------------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 efs \
 && useradd --system --uid 10001 --gid efs --home-dir /home/efs --create-home \
        --shell /usr/sbin/nologin efs \
 && install -d -o efs -g efs -m 0700 /efs

COPY --from=builder /out/ /usr/local/bin/
COPY docker/entrypoint.sh /usr/local/bin/efs-entrypoint
RUN chmod 0755 /usr/local/bin/efs-entrypoint

# docker exec bypasses the entrypoint: efsctl finds the data dir (and the admin socket of the
# running server) through EFS_DATA.
# EFS_GENERATED_KEY_FILE: only with EFS_ALLOW_GENERATED_KEY=1 (trials; see docs/docker.md).
ENV EFS_DATA=/efs \
    EFS_LISTEN=0.0.0.0:8443 \
    EFS_GENERATED_KEY_FILE=/home/efs/efs.keypart
VOLUME ["/efs"]
EXPOSE 8443
USER efs
# Not /efs: files efsctl writes (generated user keys) must never land in the data dir.
WORKDIR /home/efs

# Healthy when the server answers on its admin socket and its audit log takes entries (no
# curl in the image). `efsctl health` is not recorded in the audit log.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["efsctl", "health"]

# SIGTERM (docker stop) lets in-flight requests finish; give it time: docker stop -t 45.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/efs-entrypoint"]
CMD []
