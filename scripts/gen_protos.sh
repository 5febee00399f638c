#!/usr/bin/env bash
# Regenerate the Python stubs in server/tensorgate/proto/ from protos/ (needs the [test] extra:
# grpcio-tools 1.81.1, whose protoc writes protobuf 6.33 gencode; see pyproject.toml for why).
# tests/test_protos.py fails when the committed stubs differ from what this writes.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$repo/server}"
python="${PYTHON:-python}"
"$python" -m grpc_tools.protoc -I "$repo/protos" --python_out="$out" --pyi_out="$out" \
  "$repo"/protos/tensorgate/proto/*.proto
touch "$out/tensorgate/proto/__init__.py"
