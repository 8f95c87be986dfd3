"""`fastproxy demo`: the README's first command runs the whole pipeline and exits 0."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

FASTPROXY = [sys.executable, "-c", "import sys; from fastproxy.cli import main; sys.exit(main())"]


def test_demo_runs_every_kind_on_both_paths_with_refusals_and_exits_zero(
        tmp_path: Path) -> None:
    done = subprocess.run([*FASTPROXY, "demo", "--calls", "20", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    for path in ("sidecar", "embedded"):
        for kind in ("Echo.Unary", "Echo.ClientStream", "Echo.ServerStream", "Echo.Bidi"):
            assert re.search(rf"ok {path}\s+{re.escape(kind)}\s+OK", out), (path, kind, out)
    assert re.search(r"PERMISSION_DENIED .*\[fastproxy-error: denied\]", out), out
    assert re.search(r"RESOURCE_EXHAUSTED .*\[fastproxy-error: rate_limited\]", out), out
    assert re.search(r"NOT_FOUND\s+[\d.]+ ms\s+item 'nope' not found$", out, re.M), out
    assert "refused by reason: denied 2, rate_limited 1; 0 unexpected" in out, out
    # a call audit mode lets through, and the Center's explanation of a denial
    assert re.search(r"ok embedded\s+Catalog\.ListItems \(reports, audit\)\s+OK .*passes; "
                     r"enforced, it would be denied", out), out
    assert "  decision:     DENIED" in out and "  rule:         none" in out, out
    assert "would be denied: reports_service -> song_service /demo.v1.Catalog/ListItems" in \
        (tmp_path / "in-proxy.log").read_text()
    assert re.search(r"latency sidecar\s+20 unary 1 KiB calls, one in flight: p50 [\d.]+ ms",
                     out), out
    # every component stopped cleanly, and said so in its log
    for name in ("center", "server", "in-proxy", "out-proxy"):
        assert (tmp_path / f"{name}.log").read_text().rstrip().endswith("stopped") or \
            "stopped" in (tmp_path / f"{name}.log").read_text(), name


def test_demo_keep_running_prints_addresses_and_stops_on_sigterm(tmp_path: Path) -> None:
    process = subprocess.Popen([*FASTPROXY, "demo", "--calls", "1", "--keep-running",
                                "--workdir", str(tmp_path)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True,
                               env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 90
    try:
        for line in process.stdout:
            lines.append(line)
            if "the stack keeps running" in line or time.monotonic() > deadline:
                break
        for _ in range(4):
            lines.append(process.stdout.readline())
        assert any(re.match(r"\s+out-proxy\s+127\.0\.0\.1:\d+", line) for line in lines), lines
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, "".join(lines) + rest
    assert "stopping everything" in rest
