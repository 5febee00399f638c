#!/usr/bin/env bash
# The test command (README, .ci/run): set up everything the tests need, lint, type-check, test.
# Idempotent; a clean clone needs only python3 (3.10+) and, for perf_analyzer, apt on x86_64.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
venv="${TENSORGATE_VENV:-$repo/.venv}"
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e ".[cpu,test]"
bash scripts/install_prometheus.sh || echo "prometheus: not installed; its test will be skipped" >&2
if [[ "$(uname -m)" == "x86_64" ]]; then
  bash scripts/install_perf_analyzer.sh
else
  echo "perf_analyzer: only shipped for x86_64; its tests will be skipped" >&2
fi
# tests/test_image.py builds the CPU image (scripts/build_image.sh) and runs it with podman.
image_tools=(podman buildah runc mmdebstrap)
for tool in "${image_tools[@]}"; do
  if ! command -v "$tool" >/dev/null 2>&1 && [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${image_tools[@]}" >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${image_tools[@]}" >/dev/null 2>&1; } \
      || echo "podman: not installed; tests/test_image.py will be skipped" >&2
    break
  fi
done
command -v kubectl >/dev/null 2>&1 \
  || echo "kubectl (with its kustomize) is not installed: the tests of deploy/ in tests/test_kubernetes.py will be skipped" >&2
"$venv/bin/ruff" check server tests scripts bench deploy
"$venv/bin/ruff" format --check server tests scripts bench deploy
"$venv/bin/mypy"
"$venv/bin/python" -m pytest "$@"
