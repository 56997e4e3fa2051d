#!/usr/bin/env bash
# Makes a Docker engine with API >= 1.44 (what Testcontainers 4.x and Compose v2 need) available and running.
# Safe to run again: does nothing when a new enough engine already answers.
#
# On Debian 12 the distribution's own engine (20.10, API 1.41) is too old, so this installs Debian 13's
# docker.io, containerd and docker-compose packages (they need only glibc >= 2.34) beside Debian 12's runc,
# tini and iptables. The Debian 13 suite is read from the machine's own apt mirror (taken from its apt
# sources) through a temporary apt directory; the machine's apt configuration is not changed.
# Then dockerd is started in the background (log: /var/log/dtrain-dockerd.log) and the socket awaited.
#
# Needs root (or sudo). Other distributions: install Docker Engine >= 25 and Compose v2 yourself.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
min_api="1.44"

api_ok() {
  local v
  v="$(docker version --format '{{.Server.APIVersion}}' 2>/dev/null)" || return 1
  [[ -n "$v" ]] && [[ "$(printf '%s\n%s\n' "$min_api" "$v" | sort -V | head -1)" == "$min_api" ]]
}
compose_ok() { docker compose version >/dev/null 2>&1; }

if api_ok && compose_ok; then
  echo "docker-setup: engine $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})') and $(docker compose version --short) ok"
  exit 0
fi

engine_version() { dockerd --version 2>/dev/null | sed -E 's/^Docker version ([0-9]+)\..*/\1/'; }

if ! command -v dockerd >/dev/null 2>&1 || [[ "$(engine_version)" -lt 25 ]] || ! compose_ok; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "docker-setup: no apt-get here; install Docker Engine >= 25 with Compose v2 and run again" >&2
    exit 1
  fi
  . /etc/os-release
  echo "docker-setup: installing a Docker engine (this machine: $PRETTY_NAME)"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq runc tini iptables debootstrap ca-certificates >/dev/null
  if [[ "${VERSION_CODENAME:-}" == "bookworm" ]]; then
    mirror="$(debian_mirror)"
    if [[ -z "$mirror" ]]; then
      echo "docker-setup: no Debian mirror found in /etc/apt/sources.list*" >&2
      exit 1
    fi
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    mkdir -p "$tmp/lists/partial" "$tmp/sources" "$tmp/debs"
    printf 'Types: deb\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$mirror" >"$tmp/sources/trixie.sources"
    apt_tmp=(-o "Dir::Etc::sourceparts=$tmp/sources" -o Dir::Etc::sourcelist=/dev/null -o "Dir::State::Lists=$tmp/lists"
             -o "Dir::Cache::archives=$tmp/debs" -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
    $SUDO apt-get "${apt_tmp[@]}" update -qq
    (cd "$tmp/debs" && $SUDO apt-get "${apt_tmp[@]}" download docker.io containerd docker-compose >/dev/null)
    # Debian 12's runc and tini stay (Debian 13's need glibc 2.38); the other dependencies are already there.
    $SUDO dpkg -i "$tmp"/debs/*.deb >/dev/null
  else
    $SUDO apt-get install -y -qq docker.io containerd docker-compose >/dev/null || {
      echo "docker-setup: could not install docker.io/containerd/docker-compose; install Docker Engine >= 25 and Compose v2" >&2
      exit 1
    }
  fi
fi

# Compose v2 is a CLI plugin; make it visible to whichever docker client is first on PATH.
if ! compose_ok && [[ -x /usr/libexec/docker/cli-plugins/docker-compose ]]; then
  $SUDO mkdir -p /usr/local/lib/docker/cli-plugins
  $SUDO ln -sf /usr/libexec/docker/cli-plugins/docker-compose /usr/local/lib/docker/cli-plugins/docker-compose
fi

if ! docker version >/dev/null 2>&1; then
  if [[ -S /var/run/docker.sock ]] && pgrep -x dockerd >/dev/null; then
    :
  else
    echo "docker-setup: starting dockerd (log: /var/log/dtrain-dockerd.log)"
    $SUDO rm -f /var/run/docker.pid
    $SUDO sh -c 'setsid nohup dockerd >/var/log/dtrain-dockerd.log 2>&1 </dev/null &'
  fi
  for _ in $(seq 1 60); do
    docker version >/dev/null 2>&1 && break
    sleep 1
  done
fi
if ! api_ok; then
  echo "docker-setup: the Docker engine did not come up with API >= $min_api; see /var/log/dtrain-dockerd.log" >&2
  docker version >&2 || true
  tail -20 /var/log/dtrain-dockerd.log >&2 2>/dev/null || true
  exit 1
fi
if ! compose_ok; then
  echo "docker-setup: docker compose (v2) is not available" >&2
  exit 1
fi
echo "docker-setup: engine $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})') and compose $(docker compose version --short) ok"
