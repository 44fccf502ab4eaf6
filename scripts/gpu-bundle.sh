#!/usr/bin/env bash
# Builds, on this machine, everything scripts/gpu-run.sh runs, for a GPU machine that has CUDA and
# PyTorch but no Rust toolchain and no network: release binaries with the `cuda` feature (the GPU
# tests, the `veritrace` CLI, the gpu_report example and the criterion GPU benchmark), stripped,
# in .gpu-bundle/ (git-ignored). Copy or carry that folder with the working tree; gpu-run.sh uses
# it when `cargo` is missing. The binaries are x86-64 Linux (glibc): build on such a machine.
#
# The test binaries have this checkout's absolute path compiled in (CARGO_MANIFEST_DIR and the
# CLI's path); gpu-run.sh links that path to the working tree it runs in.
set -euo pipefail
cd "$(dirname "$0")/.."
features=veritrace-model/cuda,veritrace-sim/cuda,veritrace-cli/cuda
out=.gpu-bundle
json=$(mktemp)
trap 'rm -f "$json"' EXIT
fmt=--message-format=json-render-diagnostics

cargo build --release --locked --features "$features" -p veritrace-cli --bin veritrace "$fmt" >"$json"
cargo test --release --locked --no-run --features "$features" --workspace \
    --test cuda --test nvrtc --test device "$fmt" >>"$json"
cargo build --release --locked --features veritrace-model/cuda -p veritrace-model \
    --example gpu_report "$fmt" >>"$json"
cargo bench --locked --no-run --features veritrace-model/cuda -p veritrace-model --bench gpu \
    "$fmt" >>"$json"

rm -rf "$out"
mkdir -p "$out"
# One file per artifact, named <package>.<kind>.<target>, and the path it was built at (which
# gpu-run.sh recreates for the CLI, whose path the CLI tests have compiled in).
python3 - "$json" "$out" "$PWD" <<'PY'
import json, os, shutil, sys
src, out, root = sys.argv[1:]
manifest = []
for line in open(src):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    exe = m.get("executable") if m.get("reason") == "compiler-artifact" else None
    if not exe:
        continue
    # "path+file:///dir#name@1.0", or "path+file:///name#1.0" when the folder is the name
    url, _, frag = m["package_id"].partition("#")
    pkg = frag.split("@")[0] if "@" in frag else url.rstrip("/").rsplit("/", 1)[-1]
    target = m["target"]
    name = f"{pkg}.{target['kind'][0]}.{target['name']}"
    shutil.copy2(exe, os.path.join(out, name))
    manifest.append(f"{name} {os.path.relpath(exe, root)}")
manifest = sorted(set(manifest))
open(os.path.join(out, "MANIFEST"), "w").write("\n".join(manifest) + "\n")
print("\n".join(manifest))
PY
printf '%s\n' "$PWD" >"$out/BUILT_AT"
strip "$out"/veritrace* 2>/dev/null || true
du -sh "$out"
