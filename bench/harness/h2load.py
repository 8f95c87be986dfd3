"""h2load as a gRPC load generator: one framed message per request, output parsed and checked.

h2load reports HTTP 200 for a gRPC error too (the status is in the trailers), so a run counts
only when the response DATA bytes equal calls x (5 + reply size): every call came back with
exactly one gRPC frame of the echoed size.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")
_REQUESTS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                       r"(\d+) failed, (\d+) errored")
_FINISHED = re.compile(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s")
_DATA = re.compile(r"traffic: .*?, [\d.]+\w*B \((\d+)\) data")


def available() -> bool:
    return shutil.which("h2load") is not None


def version() -> str:
    if not available():
        return "not installed"
    out = subprocess.run(["h2load", "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip()


def write_frame(path: Path, message: bytes) -> Path:
    """One gRPC length-prefixed message: flag 0, 4-byte big-endian length, the bytes."""
    path.write_bytes(b"\x00" + len(message).to_bytes(4, "big") + message)
    return path


@dataclass(frozen=True, slots=True)
class H2loadRun:
    calls: int
    succeeded: int
    elapsed_s: float
    throughput: float
    data_bytes: int
    valid: bool
    problem: str


def command(url: str, frame: Path, calls: int, clients: int, streams: int) -> list[str]:
    args = ["h2load", "-n", str(calls), "-c", str(clients), "-m", str(streams), "-t", "1",
            "-d", str(frame)]
    for header in GRPC_HEADERS:
        args += ["-H", header]
    return [*args, url]


def parse(output: str, calls: int, reply_size: int) -> H2loadRun:
    requests, finished, data = (_REQUESTS.search(output), _FINISHED.search(output),
                                _DATA.search(output))
    if not (requests and finished and data):
        return H2loadRun(calls, 0, 0.0, 0.0, 0, False, "unparsable h2load output: "
                         + output.strip()[-300:])
    succeeded = int(requests.group(4))
    elapsed = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
    data_bytes = int(data.group(1))
    expected = calls * (5 + reply_size)
    problem = ""
    if succeeded != calls:
        problem = f"{succeeded} of {calls} requests succeeded"
    elif data_bytes != expected:
        problem = (f"response data {data_bytes} B != {calls} x (5 + {reply_size}) = {expected} B"
                   " (gRPC errors inside HTTP 200?)")
    return H2loadRun(calls, succeeded, elapsed, calls / elapsed if elapsed else 0.0,
                     data_bytes, not problem, problem)


def run(url: str, frame: Path, reply_size: int, calls: int, clients: int = 4,
        streams: int = 16, timeout_s: float = 300.0) -> H2loadRun:
    out = subprocess.run(command(url, frame, calls, clients, streams), capture_output=True,
                         text=True, timeout=timeout_s, check=False)
    return parse(out.stdout + out.stderr, calls, reply_size)
