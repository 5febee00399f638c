#!/usr/bin/env bash
# Install NVIDIA perf_analyzer (Triton's load generator) for benchmarking tensorgate.
#
# perf_analyzer is not on PyPI by itself (the `perf-analyzer` package is an empty
# placeholder); the real binary ships as wheel data in the x86_64 tritonclient wheel.
# 2.51.0 is the newest one whose binary runs on glibc < 2.38 (Debian 12 has 2.36).
# It goes in its OWN venv so it never clashes with the project's tritonclient.
#
# Result: <tools dir>/perf_analyzer/bin/perf_analyzer; run it via scripts/perf_analyzer.
# Idempotent: exits immediately when the stamp file matches the pinned versions.
# Env: TENSORGATE_TOOLS_DIR (default <repo>/.tools), PYTHON (default python3).
set -euo pipefail

REPO="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"
VENV="${TENSORGATE_TOOLS_DIR:-$REPO/.tools}/perf_analyzer"
PYTHON="${PYTHON:-python3}"
TRITONCLIENT_VERSION=2.51.0
CUDART_VERSION=12.6.77   # provides libcudart.so.12 (loaded even without a GPU)
STAMP="$VENV/.installed"
WANT="tritonclient==$TRITONCLIENT_VERSION nvidia-cuda-runtime-cu12==$CUDART_VERSION"

[[ $(uname -m) == x86_64 ]] || { echo "install_perf_analyzer: only x86_64 is supported" >&2; exit 1; }

# 1. System library: libb64.so.0d (Debian package libb64-0d), not bundled in the wheel.
if ! ldconfig -p | grep 'libb64\.so\.0d' >/dev/null; then  # no -q: SIGPIPE+pipefail
    echo "install_perf_analyzer: installing libb64-0d with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    SUDO=()
    if [[ $EUID -ne 0 ]] && command -v sudo >/dev/null; then SUDO=(sudo -E); fi
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends libb64-0d >/dev/null \
        || { "${SUDO[@]}" apt-get update -qq \
             && "${SUDO[@]}" apt-get install -y -qq --no-install-recommends libb64-0d >/dev/null; }
fi

# 2. Fast path: already installed with the pinned versions.
if [[ -x $VENV/bin/perf_analyzer && "$(cat "$STAMP" 2>/dev/null)" == "$WANT" ]]; then
    echo "perf_analyzer already installed in $VENV"
    exit 0
fi

# 3. Fresh venv (wipes any half-finished earlier attempt).
echo "install_perf_analyzer: installing into $VENV" >&2
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
DL="$(mktemp -d)"
trap 'rm -rf "$DL"' EXIT
# Platform wheel is only fetched with an explicit --platform (pip would pick the
# pure-python one otherwise); --no-deps keeps its old Python deps out.
"$VENV/bin/pip" download -q --no-deps --only-binary=:all: --platform manylinux1_x86_64 \
    "tritonclient==$TRITONCLIENT_VERSION" -d "$DL"
"$VENV/bin/pip" install -q --no-deps "$DL"/tritonclient-*.whl
"$VENV/bin/pip" install -q "nvidia-cuda-runtime-cu12==$CUDART_VERSION"

# 4. Check that every shared library resolves, then stamp the install.
CUDART_LIB="$(echo "$VENV"/lib/python3*/site-packages/nvidia/cuda_runtime/lib)"
if LD_LIBRARY_PATH="$CUDART_LIB" ldd "$VENV/bin/perf_analyzer" | grep 'not found'; then
    echo "install_perf_analyzer: missing shared libraries (see above)" >&2
    exit 1
fi
echo "$WANT" > "$STAMP"
echo "perf_analyzer installed: $VENV/bin/perf_analyzer (run it via scripts/perf_analyzer)"
