# The S3-compatible server of dtrain's storage tests (eng/s3-server: s3rver, checking SigV4 signatures), for the compose
# profile `s3` (docs/storage.md "Object storage"). Built by scripts/s3-image.sh, offline: the build context holds the
# host's Node.js (node/) and eng/s3-server with its installed npm packages (app/); nothing is downloaded at build time.
ARG BASE_IMAGE=debian:trixie-slim
FROM ${BASE_IMAGE}
COPY node/ /opt/s3-server/node/
COPY app/ /opt/s3-server/app/
RUN set -eu; \
    groupadd --system --gid 10002 s3; \
    useradd --system --uid 10002 --gid s3 --home-dir /var/lib/s3 --no-create-home --shell /usr/sbin/nologin s3; \
    mkdir -p /var/lib/s3; chown s3:s3 /var/lib/s3; \
    /opt/s3-server/node/bin/node --version >/dev/null
ENV PATH=/opt/s3-server/node/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LD_LIBRARY_PATH=/opt/s3-server/node/lib
USER 10002:10002
VOLUME /var/lib/s3
EXPOSE 9000
# Anonymous requests are refused with 403: an answer means the server is up.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --start-interval=1s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:9000/').then(r => process.exit(r.status === 403 ? 0 : 1), () => process.exit(1))"]
LABEL org.opencontainers.image.title="dtrain-s3" \
      org.opencontainers.image.description="S3-compatible test server (s3rver) for dtrain's dataset storage"
ENTRYPOINT ["node", "/opt/s3-server/app/server.js", "--directory", "/var/lib/s3", "--address", "0.0.0.0", "--port", "9000"]
CMD ["--bucket", "datasets"]
