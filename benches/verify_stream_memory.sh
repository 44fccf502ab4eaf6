#!/bin/bash
# Peak memory and time of `verify` on one trace's openings, for two release binaries side by side
# (BENCHMARKS.md, "`verify` checking an opening as it streams in"). Each binary opens and
# verifies its own openings (their envelope versions may differ). Usage:
#   OLD=path/to/previous/veritrace NEW=target/release/veritrace TOKENS=6000 KS="16" \
#       bash benches/verify_stream_memory.sh
set -euo pipefail
OLD=${OLD:?the previous release binary}
NEW=${NEW:-target/release/veritrace}
export VERITRACE_CACHE_DIR=off RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
"$NEW" prove --model small --setup f32/attn=eager/kernels=invariant \
    --prompt-tokens "${TOKENS:-2040}" --output 8 --chunk 16 --out "$D/run" > /dev/null
for K in ${KS:-1 16 64}; do
  for bin in old new; do
    B=$OLD; [ $bin = new ] && B=$NEW
    "$B" open "$D/run/trace.safetensors" --non-interactive --samples "$K" --out "$D/$bin$K" > /dev/null
  done
  for rep in 1 2 3; do
    for bin in old new; do
      B=$OLD; [ $bin = new ] && B=$NEW
      size=$(stat -c %s "$D/$bin$K/opening-0.vtpm")
      /usr/bin/time -f "k=$K $bin opening $size B: %e s %M KB" "$B" verify --model small \
          --commitment "$D/run/commitment.json" --non-interactive --samples "$K" \
          --opening "$D/$bin$K/opening-0.vtpm" > /dev/null
    done
  done
done
