#!/usr/bin/env bash
# Installs the real engines veritrace is tested against (tests/engines/, crates/cli/tests/engines.rs)
# into a virtual environment at target/engines: PyTorch (used on the CPU; the PyPI wheel brings
# CUDA libraries that stay unused here, about 5.6 GB installed), Hugging Face transformers,
# safetensors and blake3, at pinned versions. Idempotent; about 2 minutes on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=target/engines
mkdir -p target
if ! "$VENV/bin/python" -c "import torch, transformers" 2>/dev/null; then
    # pip unpacks about 3 GB of wheels and installs 5.7 GB; say so plainly instead of failing
    # half-way with ENOSPC (a CI run once had under 3 GB free when it reached this step).
    free_kb=$(df -Pk target | awk 'NR==2 {print $4}')
    need_kb=$((9 * 1024 * 1024))
    if [ "$free_kb" -lt "$need_kb" ]; then
        echo "install-engines: $((free_kb / 1024)) MiB free under target/, about 9 GiB needed" \
            "(PyTorch's PyPI wheel brings its CUDA libraries); free some disk and run again" >&2
        df -h target >&2
        exit 1
    fi
fi
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
# pip's temporary files go beside the venv, on the disk checked above, not in a possibly small /tmp.
mkdir -p target/tmp-pip
TMPDIR="$PWD/target/tmp-pip" "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir \
    "torch==2.15.0" "transformers==5.25.0" "safetensors==0.8.0" "blake3==1.0.11" "numpy==2.4.6"
rm -rf target/tmp-pip
"$VENV/bin/python" -c "import torch, transformers; print('engines: torch', torch.__version__, 'transformers', transformers.__version__)"
