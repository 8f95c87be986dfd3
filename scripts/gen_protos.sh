#!/usr/bin/env bash
# Regenerates generated/fastproxy/v1 from protos/fastproxy/v1 (messages, gRPC stubs, .pyi),
# and generated/fastproxy/etcd from protos/fastproxy/etcd (the part of etcd's API the
# Center's etcd store speaks).
# Usage: scripts/gen_protos.sh [OUT_DIR]   (default: generated/)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/generated}
python=${PYTHON:-python}
for package in v1 etcd; do
  mkdir -p "$out/fastproxy/$package"
  rm -f "$out/fastproxy/$package"/*_pb2*.py "$out/fastproxy/$package"/*_pb2*.pyi
done
cd "$root/protos"
"$python" -m grpc_tools.protoc -I . \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  fastproxy/v1/*.proto
"$python" -m grpc_tools.protoc -I . \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  fastproxy/etcd/*.proto
cat > "$out/fastproxy/v1/__init__.py" <<'PY'
"""Code generated from protos/fastproxy/v1 by scripts/gen_protos.sh. Do not edit."""
PY
cat > "$out/fastproxy/etcd/__init__.py" <<'PY'
"""Code generated from protos/fastproxy/etcd by scripts/gen_protos.sh. Do not edit."""
PY
