"""A proxy loads what its role and policy use, not more (issue 15, memory): no `zstandard`
until a policy names zstd, no server reflection client in an out-proxy (an in-proxy loads it
once it first asks its upstream)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from support.dataplane import (
    CALLEE,
    CALLER,
    DataplanePolicy,
    Proxies,
    call_kind,
    channel,
    free_address,
)
from support.transport import KINDS
from support.upstream_app import UpstreamProcess


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


# A started proxy, after calls of every kind through the chain: what a role loads without
# telemetry (no OTEL_* variable) and with a policy that names no zstd. The modules are read at
# the proxy's exit, by a `sitecustomize` of the test's on PYTHONPATH.
_SITECUSTOMIZE = '''
import atexit, os, sys

def _write_modules():
    with open(os.environ["FASTPROXY_TEST_MODULES"], "w") as out:
        out.write("\\n".join(sorted(sys.modules)))

atexit.register(_write_modules)
'''
NOT_WITHOUT_TELEMETRY = ("opentelemetry", "zstandard", "fastproxy.telemetry.tracing",
                         "fastproxy.telemetry.metrics", "fastproxy.telemetry.sampling")


def test_a_started_proxy_without_telemetry_loads_no_opentelemetry(
        tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    base = {name: value for name, value in os.environ.items()
            if not name.startswith("OTEL_")}
    base["PYTHONPATH"] = os.pathsep.join(
        [str(site), *filter(None, [base.get("PYTHONPATH")])])
    proxies = Proxies(tmp_path)
    in_address = free_address()
    policy = DataplanePolicy().with_(song_endpoints=(in_address,))
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(policy.yaml_text())
    with UpstreamProcess(name="imports") as upstream:
        try:
            inproxy = proxies.start("in", CALLEE, in_address, policy=policy_path,
                                    upstream=upstream.address,
                                    env={**base, "FASTPROXY_TEST_MODULES": str(tmp_path / "in")})
            out = proxies.start("out", CALLER, free_address(), policy=policy_path,
                                env={**base, "FASTPROXY_TEST_MODULES": str(tmp_path / "out")})
            with channel(out.address) as ch:
                for kind in KINDS:
                    call_kind(ch, kind, b"imports")
        finally:
            proxies.stop_all()
    assert not inproxy.running() and not out.running()
    for side in ("in", "out"):
        modules = (tmp_path / side).read_text().split()
        loaded = sorted({name for name in modules for prefix in NOT_WITHOUT_TELEMETRY
                         if name == prefix or name.startswith(prefix + ".")})
        assert "proxy_svc.forward" in modules, side  # the probe saw the proxy's modules
        assert loaded == [], f"{side}-proxy loaded {loaded}"
