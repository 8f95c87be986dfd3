"""examples/README.md run as a new user runs it: every command of its code blocks, in order,
from a copy of the repository's `examples/` (on free ports instead of the fixed ones, so
that tests can run side by side), the edits its text asks for, and what it says each step
shows; then Ctrl-C for every process, which must exit 0 with no traceback in its log."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support.dataplane import SERVING, free_address, health_status

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
FIXED_PORTS = ("7070", "9000", "9101", "9102", "9201")
LONG_RUNNING = re.compile(r"-m (center_svc|server_svc|proxy_svc)|embedded_server\.py")
WAIT_S = 15.0


def blocks(readme: str) -> list[list[str]]:
    """The commands of each ```sh block: continuation lines joined, comments dropped."""
    found = []
    for block in re.findall(r"```sh\n(.*?)```", readme, re.S):
        text = block.replace("\\\n", " ")
        found.append([line.split("  #")[0].strip() for line in text.splitlines()
                      if line.split("  #")[0].strip()])
    return found


@dataclass
class Walk:
    """The copy of examples/ and the processes started from its README."""

    root: Path
    ports: dict[str, str]
    env: dict[str, str]
    started: list[tuple[str, subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def run(self, command: str, expect_rc: int = 0) -> str:
        done = subprocess.run(shlex.split(command), cwd=self.root, env=self.env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == expect_rc, f"{command}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def start(self, command: str) -> None:
        log = self.root / f"process-{len(self.started)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(shlex.split(command), cwd=self.root, env=self.env,
                                    stdout=out, stderr=out)
        self.started.append((command, proc, log))
        listen = re.search(r"--listen (\S+)", command)
        if listen is not None:
            wait_for(lambda: health_status(listen.group(1)) == SERVING,
                     f"{command} SERVING", proc, log)

    def log_of(self, fragment: str) -> str:
        return next(log.read_text() for command, _, log in self.started if fragment in command)

    def nodes(self) -> dict[str, dict[str, object]]:
        """`fastproxy nodes --json`, by role and address (or role alone)."""
        listed = json.loads(self.run("fastproxy nodes --json"))["nodes"]
        return {f"{node['role']} {','.join(node['registered_addresses'])}".strip(): node
                for node in listed}

    def stop_all(self) -> list[str]:
        """Ctrl-C to every process still running; what went wrong, as lines."""
        problems = []
        for _, proc, _ in reversed(self.started):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for command, proc, log in self.started:
            try:
                code = proc.wait(timeout=WAIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                code = -9
            text = log.read_text()
            if code != 0 or "Traceback" in text:
                problems.append(f"{command} exited {code}:\n{text}")
        return problems


def wait_for(check: Callable[[], bool], what: str,
             proc: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: exited {proc.returncode}:\n{log.read_text() if log else ''}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {WAIT_S} s\n{log.read_text() if log else ''}")
        time.sleep(0.1)


@pytest.fixture
def walk(tmp_path: Path) -> Iterator[Walk]:
    ports = {port: free_address().rsplit(":", 1)[1] for port in FIXED_PORTS}

    def moved(text: str) -> str:
        for old, new in ports.items():
            text = text.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
        return text

    (tmp_path / "examples").mkdir()
    for source in (ROOT / "examples").iterdir():
        if source.is_file():
            (tmp_path / "examples" / source.name).write_text(moved(source.read_text()))
    venv_bin = str(Path(sys.executable).parent)  # `python` and `fastproxy` of this venv
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}",
           "FASTPROXY_CENTER": f"127.0.0.1:{ports['7070']}"}  # the CLI's and scripts' default
    started = Walk(tmp_path, ports, env)
    yield started
    for _, proc, _ in started.started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_examples_readme_works_as_written(walk: Walk) -> None:
    readme = (walk.root / "examples" / "README.md").read_text()
    center, history_nodes, service_in, out_nodes, calls, server_call = blocks(readme)
    policy = walk.root / "examples" / "policy.yaml"

    # 1. the Center, then what it holds
    (command,) = center
    walk.start(command)
    history, nodes = (walk.run(command) for command in history_nodes)
    assert "file:examples/policy.yaml" in history
    assert "no nodes connected" in nodes

    # 2, 3. the service, the in-proxy, the out-proxy: both proxies at revision 1, current
    for command in (*service_in, out_nodes[0]):
        walk.start(command)
    in_key, out_key = f"in 127.0.0.1:{walk.ports['9101']}", "out"
    wait_for(lambda: {in_key, out_key} <= walk.nodes().keys(), "both proxies connected")
    for node in walk.nodes().values():
        assert (node["acked_revision"], node["state"]) == (1, "current"), node
    assert "current" in walk.run(out_nodes[1])
    assert (walk.root / ".fastproxy-cache").is_dir()

    # 4. calls through the sidecar and embedded
    sidecar, embedded = (walk.run(command) for command in calls)
    assert sidecar.splitlines() == ["hello through the sidecar", "0 tick", "1 tick", "2 tick"]
    assert embedded.splitlines() == ["hello, sealed in-process", "['a', 'b', 'c']"]

    # 5. the policy changed live: the in-proxy at revision 2, the out-proxy current at 1
    text = policy.read_text()
    assert "rate_limit: {rps: 100, burst: 20}" in text
    policy.write_text(text.replace("rate_limit: {rps: 100, burst: 20}",
                                   "rate_limit: {rps: 1, burst: 1}"))
    wait_for(lambda: walk.nodes()[in_key]["acked_revision"] == 2, "the in-proxy at revision 2")
    out_node = walk.nodes()[out_key]
    assert (out_node["acked_revision"], out_node["state"]) == (1, "current")
    limited = walk.run(calls[0], expect_rc=1)
    assert "refused: RESOURCE_EXHAUSTED (rate_limited)" in limited
    policy.write_text(text.replace("rate_limit: {rps: 100, burst: 20}",
                                   "rate_limit: {rps: 0, burst: 1}"))
    wait_for(lambda: "services.song_service.allow[0].rate_limit.rps: must be greater than 0"
             in walk.log_of("center_svc"), "the mistake refused, naming the field")
    assert "`fastproxy policy rollback 1`" in readme
    assert walk.run("fastproxy policy rollback 1").startswith("rolled back to revision 1")

    # 6. the app's own server: registered at the Center, answering sealed calls itself
    walk.start(server_call[0])
    own = f"in 127.0.0.1:{walk.ports['9201']}"
    wait_for(lambda: own in walk.nodes(), "the app's own server registered")
    assert walk.run(server_call[1]).splitlines() == [
        "hello, sealed in-process (answered by the app's own server)", "['a', 'b', 'c']"]

    # 7. Ctrl-C everywhere
    assert walk.stop_all() == []
