"""The data-plane benchmark harness still works: `bench/dataplane.py --smoke` starts the real
processes, checks every reply and measures each setup, and its h2load check refuses a run whose
replies are not all echoes (h2load counts a gRPC error inside HTTP 200 as a success)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from harness import h2load  # noqa: E402

HAS_NGINX = shutil.which("nginx") is not None
HAS_H2LOAD = shutil.which("h2load") is not None


def h2load_output(succeeded: int, data_bytes: int) -> str:
    return (f"finished in 1.50s, 666.67 req/s, 1.00MB/s\n"
            f"requests: 1000 total, 1000 started, 1000 done, {succeeded} succeeded, "
            f"{1000 - succeeded} failed, 0 errored, 0 timeout\n"
            f"status codes: 1000 2xx, 0 3xx, 0 4xx, 0 5xx\n"
            f"traffic: 1.05MB (1100000) total, 20.00KB (20480) headers (space savings 90.00%),"
            f" 1.00MB ({data_bytes}) data\n")


def test_h2load_run_counts_only_when_every_reply_is_a_full_echo() -> None:
    good = h2load.parse(h2load_output(1000, 1000 * (5 + 1024)), 1000, 1024)
    assert good.valid and good.throughput == pytest.approx(1000 / 1.5)
    # a gRPC error is an HTTP 200 with no DATA frame: fewer data bytes than echoes
    errors = h2load.parse(h2load_output(1000, 990 * (5 + 1024)), 1000, 1024)
    assert not errors.valid and "data" in errors.problem
    failed = h2load.parse(h2load_output(990, 1000 * (5 + 1024)), 1000, 1024)
    assert not failed.valid
    assert not h2load.parse("connect failed", 1000, 1024).valid


def test_grpc_frame_is_flag_length_message(tmp_path: Path) -> None:
    frame = h2load.write_frame(tmp_path / "f.bin", b"abc").read_bytes()
    assert frame == b"\x00\x00\x00\x00\x03abc"


@pytest.mark.timeout(90)
def test_smoke_run_measures_every_setup(tmp_path: Path) -> None:
    setups = ["direct", "sealed"] + (["nginx"] if HAS_NGINX else [])
    out = tmp_path / "smoke.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "dataplane.py"), "--smoke",
         "--setups", ",".join(setups), "--json", str(out)],
        capture_output=True, text=True, timeout=80, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    doc = json.loads(out.read_text())
    measurements = doc["measurements"]
    assert {m["setup"] for m in measurements} == set(setups)
    assert all(m["valid"] and m["calls"] > 0 for m in measurements)
    tools = {m["tool"] for m in measurements}
    assert tools == ({"h2load", "py"} if HAS_H2LOAD else {"py"})
    sealed = [m for m in measurements if m["setup"] == "sealed"]
    for m in sealed:
        assert set(m["cpu_s_per_1000"]) >= {"out-proxy", "in-proxy", "upstream"}
        assert m["peak_rss_kib"]["out-proxy"] > 0
    # the proxies did work for the calls counted: their CPU over the windows is not zero
    assert sum(m["cpu_s"]["out-proxy"] + m["cpu_s"]["in-proxy"] for m in sealed) > 0
    single = [m for m in sealed if m["mode"] == "single"]
    assert single and single[0]["p50_ms"] > 0
    targets = doc["targets"]
    assert "added_p50_ms.sealed" in targets
    if HAS_NGINX and HAS_H2LOAD:
        assert "cpu_ratio.sealed" in targets
