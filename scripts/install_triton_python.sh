#!/usr/bin/env bash
# Install Triton Inference Server with its Python backend, the peer of bench/run.py's "Triton's Python path"
# rows (a model.py running ONNX Runtime, bench/triton_python_model.py).
#
# No tritonserver is on PyPI by itself; NVIDIA's PyTriton wheel (nvidia-pytriton) carries one (2.51.0, the
# release of our perf_analyzer) with the Python backend and a backend stub per Python 3.8-3.13. The stub
# embeds the interpreter through libpython3.X.so.1.0 found by the dynamic loader, i.e. the system's, and
# must load the standard library of that same release: the stub fails inside `threading` when they differ
# (seen with pyenv's 3.11.7 stdlib and Debian's 3.11.2 libpython). So the venv is made from the Python
# whose libpython the stub resolves (Debian's /usr/bin/python3 on Debian 12), checked below.
#
# Result: <tools dir>/triton_python/tritonserver/bin/tritonserver with backends/python/triton_python_backend_stub,
# and <tools dir>/triton_python/venv (the stub's site-packages: onnxruntime, numpy).
# Idempotent: exits at once when the stamp file matches the pinned versions.
# Env: TENSORGATE_TOOLS_DIR (default <repo>/.tools), PYTHON (default /usr/bin/python3),
#      ONNXRUNTIME_VERSION (default: the version in the project's .venv, so both servers run the same engine).
set -euo pipefail

REPO="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"
DEST="${TENSORGATE_TOOLS_DIR:-$REPO/.tools}/triton_python"
PYTHON="${PYTHON:-/usr/bin/python3}"
PYTRITON_VERSION=0.7.0
if [[ -z ${ONNXRUNTIME_VERSION:-} && -x $REPO/.venv/bin/python ]]; then
    ONNXRUNTIME_VERSION="$("$REPO/.venv/bin/python" -c 'import onnxruntime; print(onnxruntime.__version__)' 2>/dev/null || true)"
fi
ORT_REQ="onnxruntime${ONNXRUNTIME_VERSION:+==$ONNXRUNTIME_VERSION}"
STAMP="$DEST/.installed"
WANT="nvidia-pytriton==$PYTRITON_VERSION $ORT_REQ $("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"

[[ $(uname -m) == x86_64 ]] || { echo "install_triton_python: only x86_64 is supported" >&2; exit 1; }

if [[ -x $DEST/tritonserver/bin/tritonserver && "$(cat "$STAMP" 2>/dev/null)" == "$WANT" ]]; then
    echo "Triton's Python backend already installed in $DEST"
    exit 0
fi

# The Python's venv module and shared library (Debian splits both off the interpreter).
PYVER="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
if ! "$PYTHON" -c 'import ensurepip' 2>/dev/null || [[ ! -e "$("$PYTHON" -c 'import sysconfig as s; print(s.get_config_var("LIBDIR") + "/" + s.get_config_var("INSTSONAME"))')" ]]; then
    echo "install_triton_python: installing python$PYVER-venv and libpython$PYVER with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "python$PYVER-venv" "libpython$PYVER" >/dev/null \
        || { apt-get update -qq && apt-get install -y -qq "python$PYVER-venv" "libpython$PYVER" >/dev/null; }
fi

echo "install_triton_python: installing into $DEST (Python $PYVER from $PYTHON, $ORT_REQ)" >&2
rm -rf "$DEST"
mkdir -p "$DEST"
"$PYTHON" -m venv "$DEST/venv"
"$DEST/venv/bin/pip" install -q "nvidia-pytriton==$PYTRITON_VERSION" "$ORT_REQ" numpy

SITE="$("$DEST/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
cp -r "$SITE/pytriton/tritonserver" "$DEST/tritonserver"
rm -rf "$DEST/tritonserver/python_backend_stubs"
STUB="$SITE/pytriton/tritonserver/python_backend_stubs/$PYVER/triton_python_backend_stub"
[[ -x $STUB ]] || { echo "install_triton_python: PyTriton has no backend stub for Python $PYVER" >&2; exit 1; }
cp "$STUB" "$DEST/tritonserver/backends/python/triton_python_backend_stub"
ln -s "$SITE/nvidia_pytriton.libs" "$DEST/libs"

# Every shared library must resolve, and the stub's libpython must be this Python's own.
for binary in "$DEST/tritonserver/bin/tritonserver" "$DEST/tritonserver/backends/python/triton_python_backend_stub"; do
    if LD_LIBRARY_PATH="$DEST/libs" ldd "$binary" | grep 'not found'; then
        echo "install_triton_python: missing shared libraries of $binary (see above)" >&2
        exit 1
    fi
done
want_lib="$(readlink -f "$("$PYTHON" -c 'import sysconfig as s; print(s.get_config_var("LIBDIR") + "/" + s.get_config_var("INSTSONAME"))')")"
got_lib="$(LD_LIBRARY_PATH="$DEST/libs" ldd "$DEST/tritonserver/backends/python/triton_python_backend_stub" \
    | awk '/libpython/ {print $3}' | xargs readlink -f)"
if [[ $want_lib != "$got_lib" ]]; then
    echo "install_triton_python: the stub loads $got_lib, not $PYTHON's $want_lib; set PYTHON to the interpreter of $got_lib" >&2
    exit 1
fi
echo "$WANT" > "$STAMP"
echo "Triton's Python backend installed: $DEST/tritonserver/bin/tritonserver"
