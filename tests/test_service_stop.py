"""A service's stop is bounded by its `--grace`, whatever its telemetry is doing: the Center,
a proxy and server_svc, each exporting to an OTLP collector that is down (the exporters
retry with backoff for up to 10 s a batch), exit 0 within their grace period of SIGTERM,
and say in their log what was dropped."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from support.dataplane import SERVING, free_address, health_status
from support.sdk_stack import sdk_policy_yaml

pytestmark = pytest.mark.timeout(60)

GRACE_S = 1.0
# process exit after the drain: interpreter teardown, on a loaded 2-core machine
MARGIN_S = 1.5


def test_every_service_stops_within_its_grace_while_its_collector_is_down(
        tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(sdk_policy_yaml("127.0.0.1:9"))
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{free_address()}",
           "OTEL_TRACES_SAMPLER": "parentbased_always_on",
           "OTEL_BSP_SCHEDULE_DELAY": "60000"}  # the spans wait in the batch for the stop
    commands = {
        "center_svc": ["--store", "memory://"],
        "proxy_svc": ["--role", "out", "--service", "chat_service", "--policy", str(policy)],
        "server_svc": [],
    }
    started: dict[str, tuple[subprocess.Popen[bytes], str, Path]] = {}
    try:
        for module, flags in commands.items():
            address = free_address()
            log = tmp_path / f"{module}.log"
            with log.open("wb") as out:
                started[module] = (subprocess.Popen(
                    [sys.executable, "-m", module, "--listen", address, "--grace",
                     str(GRACE_S), *flags], env=env, stdout=out, stderr=out), address, log)
        for proc, address, log in started.values():
            deadline = time.monotonic() + 20
            while health_status(address) != SERVING:  # these calls make spans too
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            # and a call of a method it does not serve (the out-proxy: no route), so that a
            # span surely waits in the batch: without one, whether the stop ran late hung on
            # the metrics exporter's retry timer (0.95 s against a 1 s grace)
            with grpc.insecure_channel(address) as unserved, \
                    contextlib.suppress(grpc.RpcError):
                unserved.unary_unary("/test.v1.Nothing/Here")(b"", timeout=5)
        stopping = time.monotonic()
        for proc, _, _ in started.values():
            proc.send_signal(signal.SIGTERM)
        for module, (proc, _, log) in started.items():
            code = proc.wait(timeout=GRACE_S + MARGIN_S + 10)
            took = time.monotonic() - stopping
            text = log.read_text()
            assert code == 0, text
            assert took < GRACE_S + MARGIN_S, f"{module} took {took:.1f} s:\n{text}"
            assert "the rest is dropped" in text, text
    finally:
        for proc, _, _ in started.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("module", ["center_svc", "server_svc"])
def test_a_second_process_on_a_taken_address_does_not_start(tmp_path: Path,
                                                             module: str) -> None:
    """grpc lets servers share a port (SO_REUSEPORT) by default: a second Center started by
    mistake on the same address would take half of the nodes and admins to another store.
    It stops at once instead, with one line."""
    address = free_address()
    flags = ["--store", "memory://"] if module == "center_svc" else []
    log = tmp_path / "first.log"
    with log.open("wb") as out:
        first = subprocess.Popen([sys.executable, "-m", module, "--listen", address, *flags],
                                 stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 20
        while health_status(address) != SERVING:
            assert first.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        second = subprocess.run([sys.executable, "-m", module, "--listen", address, *flags],
                                capture_output=True, text=True, timeout=30)
        assert second.returncode == 1, second.stderr
        assert second.stderr.splitlines()[-1] == (
            f"{module}: error: cannot listen on {address}: address already in use"), second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=20) == 0, log.read_text()
