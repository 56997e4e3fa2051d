#!/usr/bin/env bash
# Builds and runs every test project; ends with one line "N passed, N failed, N skipped" and a non-zero
# exit status when anything failed. Extra arguments go to `dotnet test` (e.g. --filter ...).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh || exit 1
# The container tests (tests/Dtrain.E2E) need a Docker engine with API >= 1.44 and Compose v2: install and start
# one where it is missing (needs root or sudo). Without one they fail — or, on a developer machine that is not CI
# (neither CI nor DTRAIN_REQUIRE_DOCKER=1 set), skip with a line saying why.
if ! bash scripts/docker-setup.sh; then
  if [[ -n "${CI:-}" || "${DTRAIN_REQUIRE_DOCKER:-}" == "1" ]]; then
    echo "test: no usable Docker engine: the container tests will fail" >&2
  else
    echo "test: no usable Docker engine: the container tests will be skipped (run scripts/docker-setup.sh as root to enable them)" >&2
  fi
fi
# The Prometheus scrape tests (tests/Dtrain.Tests/Observability) run a real Prometheus, the dashboard's browser
# tests headless Chromium, and the dataset storage tests (tests/Dtrain.Tests/Data/Storage) a real S3-compatible server:
# scripts/test-tools.sh installs Debian's prometheus, chromium and chromium-driver where missing (needs root or sudo),
# and the S3 server's npm packages (eng/s3-server). Without them those tests fail in CI or with
# DTRAIN_REQUIRE_PROMETHEUS=1 / DTRAIN_REQUIRE_BROWSER=1 / DTRAIN_REQUIRE_S3=1 (.ci/run sets all three), and are
# skipped elsewhere.
if ! bash scripts/test-tools.sh; then
  if [[ -n "${CI:-}" || "${DTRAIN_REQUIRE_PROMETHEUS:-}" == "1" || "${DTRAIN_REQUIRE_BROWSER:-}" == "1" || "${DTRAIN_REQUIRE_S3:-}" == "1" ]]; then
    echo "test: Prometheus, Chromium or the S3 test server missing: the scrape, browser or storage tests will fail" >&2
  else
    echo "test: Prometheus, Chromium or the S3 test server missing: those tests will be skipped (run scripts/test-tools.sh as root to enable them)" >&2
  fi
fi
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# Build once, then run the test projects one after another (-m:1): the container tests and the in-process
# cluster tests would otherwise compete for the two cores of a small machine.
dotnet build Distributed.sln -c Release --nologo -v q >"$log" 2>&1
build=$?
grep -E 'Warning\(s\)|Error\(s\)|Time Elapsed' "$log"
if [[ $build -ne 0 ]]; then
  grep -E ' error ' "$log" | sort -u >&2
  echo "build failed (exit status $build)" >&2
  echo "0 passed, 1 failed, 0 skipped"
  exit 1
fi
dotnet test Distributed.sln -c Release --no-build --nologo -m:1 "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# One summary line per test assembly: "Passed!  - Failed:     0, Passed:   182, Skipped:     0, Total:   182, ..."
read -r passed failed skipped < <(grep -E '(Passed|Failed)! +- Failed: +[0-9]+, Passed: +[0-9]+, Skipped: +[0-9]+' "$log" |
  sed -E 's/.*Failed: +([0-9]+), Passed: +([0-9]+), Skipped: +([0-9]+).*/\2 \1 \3/' |
  awk '{p+=$1; f+=$2; s+=$3} END {print p+0, f+0, s+0}')
if [[ $status -ne 0 && $failed -eq 0 ]]; then
  echo "dotnet test exited with status $status (build or test host failure)" >&2
  failed=1
fi
echo "$passed passed, $failed failed, $skipped skipped"
[[ $status -eq 0 && $failed -eq 0 ]]
