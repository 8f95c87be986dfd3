#!/usr/bin/env bash
# Regenerates generated/fastproxy/v1 from protos/fastproxy/v1 (messages, gRPC stubs, .pyi).
# Usage: scripts/gen_protos.sh [OUT_DIR]   (default: generated/)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/generated}
python=${PYTHON:-python}
mkdir -p "$out/fastproxy/v1"
rm -f "$out"/fastproxy/v1/*_pb2*.py "$out"/fastproxy/v1/*_pb2*.pyi
cd "$root/protos"
"$python" -m grpc_tools.protoc -I . \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  fastproxy/v1/*.proto
cat > "$out/fastproxy/v1/__init__.py" <<'PY'
"""Code generated from protos/fastproxy/v1 by scripts/gen_protos.sh. Do not edit."""
PY
