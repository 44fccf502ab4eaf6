#!/usr/bin/env bash
# Everything the CUDA backend needs measured on a GPU (run it on a machine with an NVIDIA GPU, its
# driver, and CUDA's libnvrtc and libcublas: a CUDA toolkit or PyTorch's nvidia wheels; PyTorch
# for the SDPA comparison):
#   tests     the GPU tests (crates/model/tests/cuda.rs and nvrtc.rs, the simulator's and the
#             CLI's device tests)
#   report    examples/gpu_report.rs (which runs benches/sdpa.py for the SDPA ratio)
#             -> simulations/results/gpu.md
#   simulate  the GPU-prover scenario -> simulations/results/gpu-prover.{md,json,csv}
#   bench     the criterion GPU benchmarks (target/criterion/gpu_*)
#   all       the four in order (the default)
# Usage: bash scripts/gpu-run.sh [tests|report|simulate|bench|all]...
#
# With cargo on the machine everything is built there. Without it (a GPU machine with CUDA and
# PyTorch but no Rust toolchain), the binaries come from .gpu-bundle/, built beforehand by
# scripts/gpu-bundle.sh on an x86-64 Linux machine and copied along with the working tree.
# Each step prints its command; the first failure stops the script. When the variable OUT names a
# folder, the results (gpu.md, gpu-prover.*, the criterion folder as a tarball) are copied there too.
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
dirs = []
for p in nvidia.__path__:
    for d in sorted(os.listdir(p)):
        dirs += [os.path.join(p, d, "lib"), os.path.join(p, d, "lib64")]
print(":".join(d for d in dirs if os.path.isdir(d)))
PY
)
for d in /usr/local/cuda/lib64 "$wheel_libs"; do
    [ -n "$d" ] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
# cudarc (CUDA 12 bindings) opens libnvrtc.so / libcublas.so or their .so.12 (and older) names;
# a CUDA 13 machine may have only .so.13 files. Link the plain names to the newest version found
# (the entry points veritrace uses are the same in 12 and 13).
libs="$PWD/target/cuda-libs"
mkdir -p "$libs"
for name in nvrtc cublas cublasLt; do
    IFS=: read -ra dirs <<<"$LD_LIBRARY_PATH"
    for d in "${dirs[@]}"; do
        f=$(ls "$d/lib$name.so."* 2>/dev/null | sort -V | tail -1 || true)
        if [ -n "$f" ]; then
            ln -sfn "$f" "$libs/lib$name.so"
            break
        fi
    done
done
export LD_LIBRARY_PATH="$libs:$LD_LIBRARY_PATH"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2 || true

bundle=.gpu-bundle
if command -v cargo >/dev/null; then
    use_bundle=false
elif [ -f "$bundle/MANIFEST" ]; then
    use_bundle=true
    # The test binaries have the build checkout's path compiled in: point it at this tree, and put
    # the CLI where the CLI tests look for it.
    built_at=$(cat "$bundle/BUILT_AT")
    if [ "$built_at" != "$PWD" ] && [ ! -e "$built_at" ]; then
        mkdir -p "$(dirname "$built_at")"
        ln -s "$PWD" "$built_at"
    fi
    while read -r name path; do
        mkdir -p "$(dirname "$path")"
        cp -f "$bundle/$name" "$path"
        chmod +x "$path"
    done <"$bundle/MANIFEST"
else
    echo "gpu-run.sh: no cargo here and no $bundle/ (build it with scripts/gpu-bundle.sh)" >&2
    exit 2
fi

# The bundle's binary for <package>.<kind>.<target>.
bin() { echo "$bundle/$1"; }

# Where results are also copied when the variable OUT names a folder (a remote GPU machine whose
# $OUT comes back to the caller).
export_results() {
    [ -n "${OUT:-}" ] && [ -d "$OUT" ] || return 0
    cp -f "$@" "$OUT/" 2>/dev/null || true
}

step_tests() {
    if $use_bundle; then
        run "$(bin veritrace-model.test.cuda)" --nocapture
        run "$(bin veritrace-model.test.nvrtc)"
        run "$(bin veritrace-sim.test.device)"
        run "$(bin veritrace-cli.test.device)"
    else
        run cargo test --release -p veritrace-model --features cuda --test cuda --test nvrtc -- --nocapture
        run cargo test --release -p veritrace-sim --features cuda --test device
        run cargo test --release -p veritrace-cli --features cuda --test device
    fi
}

step_report() {
    mkdir -p simulations/results
    if $use_bundle; then
        run "$(bin veritrace-model.example.gpu_report)" >simulations/results/gpu.md.tmp
    else
        run cargo run --release -q -p veritrace-model --features cuda --example gpu_report \
            >simulations/results/gpu.md.tmp
    fi
    mv simulations/results/gpu.md.tmp simulations/results/gpu.md
    export_results simulations/results/gpu.md
}

step_simulate() {
    local cli=target/release/veritrace
    if $use_bundle; then
        cli=$(bin veritrace-cli.bin.veritrace)
    else
        run cargo build --release -p veritrace-cli --features cuda
    fi
    local out
    out=$(mktemp -d)
    run "$cli" simulate simulations/gpu.toml --quiet --out "$out"
    mkdir -p simulations/results
    for f in md json csv; do cp "$out/report.$f" "simulations/results/gpu-prover.$f"; done
    export_results simulations/results/gpu-prover.{md,json,csv}
}

step_bench() {
    if $use_bundle; then
        run "$(bin veritrace-model.bench.gpu)" --bench
    else
        run cargo bench -p veritrace-model --features cuda --bench gpu
    fi
    if [ -n "${OUT:-}" ] && compgen -G "target/criterion/gpu_*" >/dev/null; then
        (cd target && tar -czf "$OUT/criterion-gpu.tar.gz" criterion/gpu_*)
    fi
}

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(all)
for s in "${steps[@]}"; do
    case "$s" in
        tests | report | simulate | bench) "step_$s" ;;
        all) step_tests; step_report; step_simulate; step_bench ;;
        *)
            echo "gpu-run.sh: unknown step $s (tests, report, simulate, bench, all)" >&2
            exit 2
            ;;
    esac
done
