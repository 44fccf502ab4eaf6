#!/usr/bin/env bash
# Everything the CUDA backend needs measured on a GPU, in one go (run it on a machine with an
# NVIDIA GPU, its driver, and CUDA's libnvrtc and libcublas on the library path; PyTorch for the
# SDPA comparison):
#   1. the GPU tests (crates/model/tests/cuda.rs, and the CLI/simulator device tests);
#   2. examples/gpu_report.rs and benches/sdpa.py -> simulations/results/gpu.md;
#   3. the GPU-prover scenario -> simulations/results/gpu-prover.{md,json,csv};
#   4. the criterion GPU benchmarks (target/criterion/gpu_*).
# Each step prints its command; the first failure stops the script.
set -euo pipefail
cd "$(dirname "$0")/.."
run() { printf '\n== %s\n' "$*" >&2; "$@"; }

# libnvrtc and libcublas: a CUDA toolkit's, or the nvidia-* wheels PyTorch installs.
wheel_libs=$(python3 - <<'PY' 2>/dev/null || true
import os
try:
    import nvidia
except ImportError:
    raise SystemExit
dirs = [os.path.join(p, d, "lib") for p in nvidia.__path__ for d in sorted(os.listdir(p))]
print(":".join(d for d in dirs if os.path.isdir(d)))
PY
)
for d in /usr/local/cuda/lib64 "$wheel_libs"; do
    [ -n "$d" ] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LD_LIBRARY_PATH
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2 || true

run cargo test --release -p veritrace-model --features cuda --test cuda --test nvrtc -- --nocapture
run cargo test --release -p veritrace-sim --features cuda --test device
run cargo test --release -p veritrace-cli --features cuda --test device
run cargo build --release -p veritrace-cli --features cuda
mkdir -p simulations/results
run cargo run --release -q -p veritrace-model --features cuda --example gpu_report > simulations/results/gpu.md.tmp
{
    printf '\n## PyTorch on the same GPU\n\n'
    python3 benches/sdpa.py || echo "(benches/sdpa.py could not run: see its message)"
} >> simulations/results/gpu.md.tmp
mv simulations/results/gpu.md.tmp simulations/results/gpu.md
out=$(mktemp -d)
run target/release/veritrace simulate simulations/gpu.toml --quiet --out "$out"
for f in md json csv; do cp "$out/report.$f" "simulations/results/gpu-prover.$f"; done
run cargo bench -p veritrace-model --features cuda --bench gpu
