"""A proxy loads what its role and policy use, not more (issue 15, memory): no `zstandard`
until a policy names zstd, no server reflection client in an out-proxy (an in-proxy loads it
once it first asks its upstream)."""

from __future__ import annotations

import subprocess
import sys


def _loaded(code: str, modules: tuple[str, ...]) -> list[str]:
    probe = (f"import sys; {code}; "
             f"print(','.join(m for m in {modules!r} "
             "if any(n == m or n.startswith(m + '.') for n in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, timeout=60)
    return [name for name in done.stdout.strip().split(",") if name]


def test_a_proxy_loads_no_zstd_or_reflection_client_at_start() -> None:
    assert _loaded("import proxy_svc.app, proxy_svc.__main__",
                   ("zstandard", "grpc_reflection.v1alpha")) == []


def test_zstd_is_loaded_on_first_use_and_round_trips() -> None:
    code = ("from fastproxy.pipeline.compression import Compressor, decompress; "
            "assert 'zstandard' not in sys.modules; "
            "codec, packed = Compressor('zstd', 1).compress(b'abc' * 100); "
            "assert decompress(codec, packed, 1000) == b'abc' * 100")
    assert _loaded(code, ("zstandard",)) == ["zstandard"]
