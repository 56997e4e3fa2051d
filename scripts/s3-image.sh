#!/usr/bin/env bash
# Builds the image of the compose profile `s3` (deploy/s3.Dockerfile): the S3-compatible test server of eng/s3-server
# on the same Debian 13 base as the dtrain image, offline — it copies this machine's Node.js (the `node` binary and the
# libraries it links beyond the C/C++ runtime) and eng/s3-server with its npm packages (installed first with `npm ci`
# where missing) into the build context.
#
#   scripts/s3-image.sh                              # -> dtrain-s3:latest
#   DTRAIN_S3_IMAGE=dtrain-s3:dev scripts/s3-image.sh
#   DTRAIN_BASE_IMAGE=my/debian:13 scripts/s3-image.sh
# The base is $DTRAIN_BASE_IMAGE, else debian:trixie-slim when present or pullable, else dtrain-base:trixie (which
# scripts/image.sh makes with debootstrap when no registry is reachable: run it first). Needs Node.js, npm and Docker.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
image="${DTRAIN_S3_IMAGE:-dtrain-s3:latest}"
stage="$root/artifacts/s3-image"

docker version >/dev/null 2>&1 || { echo "s3-image: no Docker engine answers; run scripts/docker-setup.sh" >&2; exit 1; }
node="$(command -v node)" || { echo "s3-image: no node on PATH (Debian: apt-get install nodejs npm)" >&2; exit 1; }
if [[ ! -f "$root/eng/s3-server/node_modules/@20minutes/s3rver/package.json" ]]; then
  (cd "$root/eng/s3-server" && npm ci --omit=dev --no-audit --no-fund --loglevel=error >/dev/null)
fi

if [[ -n "${DTRAIN_BASE_IMAGE:-}" ]]; then base="$DTRAIN_BASE_IMAGE"
elif docker image inspect debian:trixie-slim >/dev/null 2>&1 || timeout 60 docker pull -q debian:trixie-slim >/dev/null 2>&1; then base=debian:trixie-slim
elif docker image inspect dtrain-base:trixie >/dev/null 2>&1; then base=dtrain-base:trixie
else
  echo "s3-image: no base image: debian:trixie-slim cannot be pulled and dtrain-base:trixie is absent (scripts/image.sh makes it)" >&2
  exit 1
fi

rm -rf "$stage"
mkdir -p "$stage/node/bin" "$stage/node/lib" "$stage/app"
cp "$(readlink -f "$node")" "$stage/node/bin/node"
# Libraries node links beyond the C/C++ runtime every base has (Debian's own nodejs links libnode, libuv, ...).
ldd "$(readlink -f "$node")" | awk '/=> \// {print $3}' |
  { grep -vE '/(libc|libm|libdl|libpthread|librt|libstdc\+\+|libgcc_s|ld-linux-x86-64)\.so' || true; } |
  while read -r lib; do cp -L "$lib" "$stage/node/lib/"; done
cp "$root/eng/s3-server/server.js" "$root/eng/s3-server/package.json" "$stage/app/"
cp -r "$root/eng/s3-server/node_modules" "$stage/app/"
chmod -R a+rX "$stage"
export DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-$(docker buildx version >/dev/null 2>&1 && echo 1 || echo 0)}"
if ! out="$(docker build -q -f "$root/deploy/s3.Dockerfile" --build-arg "BASE_IMAGE=$base" -t "$image" "$stage" 2>&1)"; then
  echo "$out" >&2
  echo "s3-image: docker build failed" >&2
  exit 1
fi
rm -rf "$stage"
echo "s3-image: $image built on $base"
