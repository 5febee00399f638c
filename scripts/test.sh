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
"$venv/bin/ruff" check server tests scripts bench deploy
"$venv/bin/ruff" format --check server tests scripts bench deploy
"$venv/bin/mypy"
"$venv/bin/python" -m pytest "$@"
