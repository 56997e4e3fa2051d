#!/usr/bin/env bash
# Installs what the tests run besides .NET and Docker, where missing: a real Prometheus (Debian package `prometheus`,
# for the scrape tests in tests/Dtrain.Tests/Observability) and headless Chromium with its driver (`chromium`,
# `chromium-driver`, for the dashboard's browser tests), and numpy for Python 3 (`python3-numpy`, for the test that reads a
# prepared dataset with scripts/read_dataset.py). Needs root (or sudo) and apt-get; safe to run again: does
# nothing when /usr/bin/prometheus (or $DTRAIN_PROMETHEUS), /usr/bin/chromium, /usr/bin/chromedriver and numpy are there.
# Exit status 1 (with a line saying what is missing) when something could not be installed.
set -uo pipefail
SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
missing=()
if [[ -z "${DTRAIN_PROMETHEUS:-}" ]] && ! command -v prometheus >/dev/null 2>&1 && [[ ! -x /usr/bin/prometheus ]]; then
  missing+=(prometheus)
fi
[[ -x "${DTRAIN_CHROMIUM:-/usr/bin/chromium}" ]] || missing+=(chromium)
[[ -x "${DTRAIN_CHROMEDRIVER:-/usr/bin/chromedriver}" ]] || missing+=(chromium-driver)
{ python3 -c 'import numpy' || /usr/bin/python3 -c 'import numpy'; } >/dev/null 2>&1 || missing+=(python3-numpy)
[[ ${#missing[@]} -eq 0 ]] && exit 0
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
