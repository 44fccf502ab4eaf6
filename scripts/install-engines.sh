#!/usr/bin/env bash
# Installs the real engines veritrace is tested against (tests/engines/, crates/cli/tests/engines.rs)
# into a virtual environment at target/engines: PyTorch (used on the CPU; the PyPI wheel brings
# CUDA libraries that stay unused here, about 5.6 GB installed), Hugging Face transformers,
# safetensors and blake3, at pinned versions. Idempotent; about 2 minutes on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=target/engines
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir \
    "torch==2.15.0" "transformers==5.25.0" "safetensors==0.8.0" "blake3==1.0.11" "numpy==2.4.6"
"$VENV/bin/python" -c "import torch, transformers; print('engines: torch', torch.__version__, 'transformers', transformers.__version__)"
