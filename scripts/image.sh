#!/usr/bin/env bash
# Builds the dtrain container image (one image; the command picks `serve` or `worker`):
#   1. `dotnet publish` of the CLI, self-contained for linux-x64, without the TorchSharp compatibility step
#      (the image's Debian 13 libstdc++ is new enough);
#   2. the base image: $DTRAIN_BASE_IMAGE, default debian:trixie-slim. When that is neither present nor pullable
#      (no registry reachable), a local Debian 13 base is made instead with debootstrap from this machine's own
#      apt mirror and `docker import`ed as dtrain-base:trixie (once; reused afterwards);
#   3. `docker build` of deploy/Dockerfile.
#
#   scripts/image.sh                          # -> dtrain:latest
#   DTRAIN_IMAGE=dtrain:dev scripts/image.sh  # another tag
#   DTRAIN_BASE_IMAGE=my/debian:13 scripts/image.sh
# Needs a running Docker engine (scripts/docker-setup.sh installs and starts one on Debian/Ubuntu).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$root/scripts/lib.sh"
image="${DTRAIN_IMAGE:-dtrain:latest}"
base="${DTRAIN_BASE_IMAGE:-debian:trixie-slim}"
local_base="dtrain-base:trixie"
stage="$root/artifacts/image"
SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
start=$SECONDS

if ! docker version >/dev/null 2>&1; then
  echo "image: no Docker engine answers; run scripts/docker-setup.sh (Debian/Ubuntu) or start Docker" >&2
  exit 1
fi

# 1. Publish. Separate obj/bin (artifacts/image/build) so the self-contained restore does not disturb normal builds.
echo "image: publishing dtrain (self-contained linux-x64)..."
rm -rf "$stage/publish"
if ! out="$(dotnet publish "$root/src/Cli/Dtrain.Cli.csproj" -c Release -r linux-x64 --self-contained \
      -p:DtrainTorchCompat=false --artifacts-path "$stage/build" -o "$stage/publish" -nologo -v q 2>&1)"; then
  echo "$out" >&2
  echo "image: dotnet publish failed" >&2
  exit 1
fi
# Native libraries (libtorch, ~500 MB) and the rest go to separate layers: a code change rebuilds only the small one.
rm -rf "$stage/context"
mkdir -p "$stage/context/native" "$stage/context/app"
find "$stage/publish" -maxdepth 1 -type f -name 'lib*.so*' -exec mv -t "$stage/context/native" {} +
mv "$stage/publish"/* "$stage/context/app/"
chmod -R a+rX "$stage/context"

# 2. Base image.
if ! docker image inspect "$base" >/dev/null 2>&1; then
  if [[ -n "${DTRAIN_BASE_IMAGE:-}" ]]; then
    docker pull "$base" || { echo "image: base image $base is neither present nor pullable" >&2; exit 1; }
  elif timeout 60 docker pull -q "$base" >/dev/null 2>&1; then
    echo "image: pulled $base"
  else
    base="$local_base"
    if ! docker image inspect "$base" >/dev/null 2>&1; then
      echo "image: debian:trixie-slim cannot be pulled here; making $base with debootstrap from this machine's apt mirror..."
      command -v debootstrap >/dev/null 2>&1 || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq debootstrap >/dev/null; }
      mirror="$(debian_mirror)"
      [[ -n "$mirror" ]] || { echo "image: no Debian mirror in /etc/apt/sources.list*; set DTRAIN_BASE_IMAGE" >&2; exit 1; }
      rootfs="$(mktemp -d)"
      trap '$SUDO rm -rf "$rootfs"' EXIT
      if ! $SUDO debootstrap --variant=minbase --include=libtcmalloc-minimal4t64,ca-certificates trixie "$rootfs" "$mirror" >"$rootfs.log" 2>&1; then
        tail -20 "$rootfs.log" >&2
        echo "image: debootstrap failed (log above)" >&2
        exit 1
      fi
      $SUDO rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb "$rootfs.log"
      $SUDO tar -C "$rootfs" -c . | docker import -c 'CMD ["bash"]' - "$base" >/dev/null
      echo "image: made $base"
    fi
  fi
fi

# 3. Build. The classic builder when BuildKit (buildx) is absent, as with Debian's docker.io.
export DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-$(docker buildx version >/dev/null 2>&1 && echo 1 || echo 0)}"
echo "image: building $image on $base..."
if ! out="$(docker build -q -f "$root/deploy/Dockerfile" --build-arg "BASE_IMAGE=$base" -t "$image" "$stage/context" 2>&1)"; then
  echo "$out" >&2
  echo "image: docker build failed" >&2
  exit 1
fi
# Superseded builds of this image leave untagged layers behind; drop those (only dangling images are touched).
docker image prune -f --filter "label=org.opencontainers.image.title=dtrain" >/dev/null 2>&1 || true
rm -rf "$stage/context"
size="$(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}')"
echo "image: $image ($size, base $base) built in $((SECONDS - start)) s"
