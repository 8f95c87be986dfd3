"""The data-plane benchmark harness still works: `bench/dataplane.py --smoke` starts the real
processes, checks every reply and measures each setup (direct, sealed, sealed without the
tunnel, sealed in front of an upstream without server reflection, the SDK in embedded mode
straight to an in-proxy, proxyless (the embedded SDK calling an app with the embedded server's
interceptors, no proxy process), the sealed chain with telemetry at the default 1% sampling,
and nginx when installed), reports a bare grpc.aio server's RSS next to the proxies', and
its h2load check refuses a run whose replies are not all echoes (h2load counts a gRPC
error inside HTTP 200 as a success). A partial run merged into an earlier JSON file replaces
only its own setups. The report pairs sealed with sealed-no-tunnel and observed-sampled with
sealed within each run.
`bench/watch_fanout.py --replicas` runs Center replicas on an etcd it starts;
`bench/handshake_latency.py` times a handshake's first calls."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from harness import h2load, report  # noqa: E402
from harness.measure import Measurement  # noqa: E402

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


@pytest.mark.timeout(120)
def test_smoke_run_measures_every_setup(tmp_path: Path) -> None:
    setups = ["direct", "sealed", "sealed-no-tunnel", "sealed-no-reflection",
              "sealed-descriptors", "embedded", "proxyless", "observed-sampled"]
    setups += ["nginx"] if HAS_NGINX else []
    out = tmp_path / "smoke.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "dataplane.py"), "--smoke",
         "--setups", ",".join(setups), "--json", str(out)],
        capture_output=True, text=True, timeout=110, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    doc = json.loads(out.read_text())
    measurements = doc["measurements"]
    assert {m["setup"] for m in measurements} == set(setups)
    assert all(m["valid"] and m["calls"] > 0 for m in measurements)
    tools = {m["tool"] for m in measurements}
    assert tools == ({"h2load", "py"} if HAS_H2LOAD else {"py"})
    # the Python client reports its own CPU; embedded is driven by it alone (h2load cannot
    # seal), and its client does the sealing an out-proxy does elsewhere
    assert all(m["cpu_s"]["client"] > 0 for m in measurements if m["tool"] == "py")
    embedded = [m for m in measurements if m["setup"] == "embedded"]
    assert embedded and {m["tool"] for m in embedded} == {"py"}
    for m in embedded:
        assert set(m["cpu_s_per_1000"]) >= {"in-proxy", "upstream", "client"}
        assert "out-proxy" not in m["cpu_s_per_1000"]
    assert sum(m["cpu_s"]["in-proxy"] for m in embedded) > 0
    sealed = [m for m in measurements if m["setup"] == "sealed"]
    for m in sealed:
        assert set(m["cpu_s_per_1000"]) >= {"out-proxy", "in-proxy", "upstream"}
        assert m["peak_rss_kib"]["out-proxy"] > 0
    # the proxies did work for the calls counted: their CPU over the windows is not zero
    assert sum(m["cpu_s"]["out-proxy"] + m["cpu_s"]["in-proxy"] for m in sealed) > 0
    single = [m for m in sealed if m["mode"] == "single"]
    assert single and single[0]["p50_ms"] > 0
    # the tunnel off is the same chain, each call its own stream: still every reply right
    assert sum(m["cpu_s"]["out-proxy"] for m in measurements
               if m["setup"] == "sealed-no-tunnel") > 0
    # default sampling: the proxies counted every call of the window; spans are not required
    # from so few calls (1% of a few hundred)
    sampled = [m for m in measurements if m["setup"] == "observed-sampled"]
    assert sampled
    for m in sampled:
        assert m["telemetry"]["sample_ratio"] == pytest.approx(0.01)
        assert m["telemetry"]["prometheus_calls"] == {"out-proxy": m["calls"],
                                                      "in-proxy": m["calls"]}
        assert m["cpu_s"]["otlp-receiver"] >= 0
    # no reflection: the same chain, the upstream a bare grpc.aio server
    no_reflection = [m for m in measurements if m["setup"] == "sealed-no-reflection"]
    assert no_reflection and sum(m["cpu_s"]["in-proxy"] for m in no_reflection) > 0
    # and with the kinds from the in-proxy's --descriptor-set
    descriptors = [m for m in measurements if m["setup"] == "sealed-descriptors"]
    assert descriptors and sum(m["cpu_s"]["in-proxy"] for m in descriptors) > 0
    # proxyless: no proxy process; the app seals, the client's SDK seals
    proxyless = [m for m in measurements if m["setup"] == "proxyless"]
    assert proxyless and {m["tool"] for m in proxyless} == {"py"}
    for m in proxyless:
        assert set(m["cpu_s_per_1000"]) >= {"app", "client"}
        assert not any(label.endswith("proxy") for label in m["cpu_s_per_1000"])
    targets = doc["targets"]
    assert {"no_reflection_cpu_ratio", "descriptors_cpu_ratio", "hop_upstream_ratio.sealed",
            "proxyless_added_cpu_ms.saturate", "proxyless_added_p50_ms",
            "sdk_added_client_cpu_ms.saturate"} <= set(targets)
    bare = targets["idle_rss_over_bare_mib"]
    assert bare["bare_mib"] > 0 and bare["proxy_mib"] > bare["bare_mib"]
    if HAS_H2LOAD:
        assert "chain_direct_throughput.sealed-no-reflection" in targets
    assert "added_p50_ms.sealed" in targets
    assert "added_p50_ms.sealed-no-tunnel" in targets
    assert "tunnel_cpu_ratio.single" in targets
    assert "observed_sampled_cpu_ratio.single" in targets
    if HAS_NGINX and HAS_H2LOAD:
        assert "cpu_ratio.sealed" in targets
        assert "met" not in targets["cpu_ratio.sealed-no-tunnel"]  # informational
    text = report.markdown(doc)
    assert "### Client CPU per call" in text
    assert "tunnel: sealed / sealed-no-tunnel CPU per hop ratio: unary 1 KiB " in text
    if HAS_H2LOAD:  # h2load saturation first, then one call in flight
        assert "h2load saturate" in text.split("tunnel: ")[1].split("; unary 1 KiB py single")[0]
    assert "(default sampling, 1%) and metrics on / off: observed-sampled / sealed" in text
    assert "upstream without / with reflection" in text
    assert "vCPU per 1,000 calls/s" in text


def measurement(setup: str, run: int, batch: str, out_cpu: float) -> dict[str, Any]:
    cpu = {"out-proxy": out_cpu, "in-proxy": out_cpu, "upstream": 0.5}
    return Measurement(run, setup, "unary 1 KiB py single", "unary", 1024, "py", "single",
                       calls=100, valid=True, p50_ms=1.0, p90_ms=1.0, p99_ms=1.0,
                       cpu_s=cpu, cpu_s_per_1000=cpu, batch=batch).to_json()


def bench_doc(date: str, measurements: list[dict[str, Any]]) -> dict[str, Any]:
    setups = sorted({str(m["setup"]) for m in measurements})
    return {"date": date, "command": f"run {date}", "machine": {}, "versions": {},
            "batches": [{"date": date, "command": f"run {date}", "setups": setups,
                         "machine": {}, "versions": {}}],
            "setups": {name: {"skipped": "", "processes": [], "batch": date}
                       for name in setups},
            "targets": {}, "measurements": measurements}


def test_merge_replaces_only_the_new_run_setups_and_pairs_ratios_within_a_run() -> None:
    earlier = bench_doc("2026-01-01", [measurement("sealed", 1, "2026-01-01", 1.0),
                                       measurement("observed", 1, "2026-01-01", 1.0),
                                       measurement("direct", 1, "2026-01-01", 0.0)])
    earlier["targets"] = report.targets(report.load_measurements(earlier), False)
    assert earlier["targets"]["observed_cpu_ratio.single"]["median"] == pytest.approx(1.0)
    # a partial run of observed alone: its ratio to sealed needs a sealed of the same run
    new = bench_doc("2026-02-02", [measurement("observed", 1, "2026-02-02", 3.0)])
    merged = report.merge(earlier, new, ["direct", "sealed", "observed"])
    assert {(m["setup"], m["batch"]) for m in merged["measurements"]} == {
        ("sealed", "2026-01-01"), ("direct", "2026-01-01"), ("observed", "2026-02-02")}
    assert list(merged["setups"]) == ["direct", "sealed", "observed"]
    ratio = merged["targets"]["observed_cpu_ratio.single"]
    assert ratio["median"] == pytest.approx(1.0) and ratio["batch"] == "2026-01-01"
    # with sealed measured again in the same run, the ratio comes from that run
    newer = bench_doc("2026-03-03", [measurement("observed", 1, "2026-03-03", 3.0),
                                     measurement("sealed", 1, "2026-03-03", 2.0)])
    merged = report.merge(merged, newer, ["direct", "sealed", "observed"])
    ratio = merged["targets"]["observed_cpu_ratio.single"]
    assert ratio["median"] == pytest.approx(1.5) and ratio["batch"] == "2026-03-03"
    assert not ratio["met"]


def test_report_rows_pair_tunnel_and_sampling_setups_within_a_run() -> None:
    doc = bench_doc("2026-04-04", [measurement("sealed", 1, "2026-04-04", 1.0),
                                   measurement("sealed-no-tunnel", 1, "2026-04-04", 1.25),
                                   measurement("observed", 1, "2026-04-04", 1.5),
                                   measurement("observed-sampled", 1, "2026-04-04", 1.05),
                                   measurement("direct", 1, "2026-04-04", 0.0)])
    t = report.targets(report.load_measurements(doc), False)
    assert t["tunnel_cpu_ratio.single"]["median"] == pytest.approx(0.8)
    assert t["observed_sampled_cpu_ratio.single"]["median"] == pytest.approx(1.05)
    assert t["observed_sampled_cpu_ratio.single"]["met"]
    assert not t["observed_cpu_ratio.single"]["met"]
    doc["targets"] = t
    rows = report._target_rows(t)
    assert any("(every call traced) and metrics on / off: observed / sealed" in row
               and "1.500x" in row for row in rows)
    assert any("(default sampling, 1%) and metrics on / off: observed-sampled / sealed" in row
               and "1.050x" in row and "**met**" in row for row in rows)
    doc["summary"] = report.summarize(report.load_measurements(doc))
    doc["batches"][0].update(machine={"cpu_model": "x", "cores": 2, "memory_gib": 1,
                                      "kernel": "k", "python": "3"},
                             versions=dict.fromkeys(
                                 ("grpcio", "protobuf", "cryptography", "nginx", "h2load"),
                                 "v"))
    for setup in doc["setups"].values():
        setup["idle_rss_mib"] = {}
    text = report.markdown(doc)
    assert ("tunnel: sealed / sealed-no-tunnel CPU per hop ratio: unary 1 KiB py single "
            "0.800x. Added p50 / p99 (unary 1 KiB py single, vs direct): sealed 0.00 / 0.00 "
            "ms, sealed-no-tunnel 0.00 / 0.00 ms.") in text


@pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd is not installed")
def test_watch_fanout_measures_replicas_sharing_an_etcd(tmp_path: Path) -> None:
    out = tmp_path / "fanout.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "watch_fanout.py"), "--replicas", "2",
                    "--watchers", "20", "--channels", "2", "--rounds", "1", "--json", str(out)],
                   check=True, capture_output=True, timeout=120)
    result = json.loads(out.read_text())
    assert result["replicas"] == 2 and result["watchers"] == 40
    assert len(result["center_rss_peak_mib"]) == 2
    assert result["apply_to_all_median_s"] < 10


def test_handshake_latency_times_each_kind_of_first_call(tmp_path: Path) -> None:
    """`bench/handshake_latency.py` (issue 12's handshake target) still runs end to end."""
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "handshake_latency.py"),
                           "--sessions", "6", "--calls", "3"],
                          check=True, capture_output=True, text=True, timeout=120, cwd=ROOT)
    lines = done.stdout.splitlines()
    for start in ("later calls in a session:", "a new session's call, warm SDK:",
                  "a new SDK instance's first call:", "the same, handed an open session:",
                  "handshake alone:"):
        assert any(line.startswith(start) and " ms" in line for line in lines), done.stdout
