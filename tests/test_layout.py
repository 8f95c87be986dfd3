"""The layout promises of the house: the protocol core is plain code, free of gRPC."""

from __future__ import annotations

import subprocess
import sys


def test_the_protocol_core_loads_no_grpc() -> None:
    code = ("import sys, fastproxy.pipeline, fastproxy.pipeline.stages, "
            "fastproxy.pipeline.node_policy, fastproxy.policy.scope, fastproxy.policy.schema; "
            "assert 'grpc' not in sys.modules, 'grpc loaded'; "
            "assert not any(m.startswith('opentelemetry') for m in sys.modules), 'otel loaded'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
