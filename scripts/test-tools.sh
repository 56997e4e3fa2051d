#!/usr/bin/env bash
# Installs what the tests run besides .NET and Docker, where missing: a real Prometheus (Debian package `prometheus`,
# for the scrape tests in tests/Dtrain.Tests/Observability), headless Chromium with its driver (`chromium`,
# `chromium-driver`, for the dashboard's browser tests), numpy for Python 3 (`python3-numpy`, for the test that reads a
# prepared dataset with scripts/read_dataset.py) and the S3-compatible server of the storage tests
# (tests/Dtrain.Tests/Data/Storage: the npm package in eng/s3-server, installed with `npm ci` from its lock file; Node.js
# and npm from Debian where there is no `node`). Needs root (or sudo) and apt-get for the Debian packages; safe to run
# again: does nothing when /usr/bin/prometheus (or $DTRAIN_PROMETHEUS), /usr/bin/chromium, /usr/bin/chromedriver, numpy
# and eng/s3-server/node_modules are there.
# Exit status 1 (with a line saying what is missing) when something could not be installed.
set -uo pipefail
SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
missing=()
s3_missing=0
[[ -f "$root/eng/s3-server/node_modules/@20minutes/s3rver/package.json" ]] || s3_missing=1
if [[ $s3_missing -eq 1 ]] && ! command -v node >/dev/null 2>&1; then missing+=(nodejs); fi
if [[ $s3_missing -eq 1 ]] && ! command -v npm >/dev/null 2>&1; then missing+=(npm); fi
if [[ -z "${DTRAIN_PROMETHEUS:-}" ]] && ! command -v prometheus >/dev/null 2>&1 && [[ ! -x /usr/bin/prometheus ]]; then
  missing+=(prometheus)
fi
[[ -x "${DTRAIN_CHROMIUM:-/usr/bin/chromium}" ]] || missing+=(chromium)
[[ -x "${DTRAIN_CHROMEDRIVER:-/usr/bin/chromedriver}" ]] || missing+=(chromium-driver)
{ python3 -c 'import numpy' || /usr/bin/python3 -c 'import numpy'; } >/dev/null 2>&1 || missing+=(python3-numpy)
install_s3_server() {
  [[ $s3_missing -eq 0 ]] && return 0
  echo "test-tools: installing the S3 test server (npm ci in eng/s3-server)"
  if ! (cd "$root/eng/s3-server" && npm ci --omit=dev --no-audit --no-fund --loglevel=error >/dev/null); then
    echo "test-tools: could not install the S3 test server (npm ci in eng/s3-server failed)" >&2
    return 1
  fi
}
if [[ ${#missing[@]} -eq 0 ]]; then
  install_s3_server
  exit
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "test-tools: no apt-get here; install ${missing[*]} yourself" >&2
  exit 1
fi
if [[ -n "$SUDO" ]] && ! command -v sudo >/dev/null 2>&1; then
  echo "test-tools: ${missing[*]} missing, and installing them needs root or sudo" >&2
  exit 1
fi
echo "test-tools: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
{ $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } || {
  echo "test-tools: could not install ${missing[*]} (apt-get failed)" >&2
  exit 1
}
install_s3_server
