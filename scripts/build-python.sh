#!/usr/bin/env bash
# Builds the `veritrace` Python wheel (crates/python: PyO3, abi3 for Python >= 3.9) with maturin,
# installs it into a fresh virtual environment (target/wheel-venv, with only the wheel's own
# dependencies from PyPI) and runs crates/python/tests/test_veritrace.py there; then, when the
# real engines are installed (scripts/install-engines.sh: target/engines with torch and
# transformers), installs it there too and runs the same tests with the capture tests required.
set -euo pipefail
cd "$(dirname "$0")/.."
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-$(nproc)}"
BUILD=target/maturin-venv
if [ ! -x "$BUILD/bin/maturin" ]; then
    python3 -m venv "$BUILD"
    "$BUILD/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir "maturin==1.16.0"
fi
# VERITRACE_WHEEL_PROFILE=dev (CI) reuses the optimized dependencies of the dev and test builds
# instead of a second full release build; the default is a release wheel.
PROFILE="${VERITRACE_WHEEL_PROFILE:-release}"
rm -rf target/wheels
"$BUILD/bin/maturin" build --profile "$PROFILE" --locked -m crates/python/Cargo.toml \
    -o target/wheels
WHEEL=$(ls target/wheels/veritrace-*.whl)
echo "wheel: $WHEEL"
rm -rf target/wheel-venv
python3 -m venv target/wheel-venv
target/wheel-venv/bin/pip install --quiet --disable-pip-version-check --no-cache-dir "$WHEEL"
echo "== the wheel's tests in a fresh venv (no torch)"
target/wheel-venv/bin/python crates/python/tests/test_veritrace.py
if [ -x target/engines/bin/python ]; then
    echo "== the wheel's tests beside torch and transformers (target/engines)"
    target/engines/bin/pip install --quiet --disable-pip-version-check --no-deps \
        --force-reinstall "$WHEEL"
    VERITRACE_REQUIRE_TORCH=1 target/engines/bin/python crates/python/tests/test_veritrace.py
fi
