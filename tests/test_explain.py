"""`fastproxy explain` against what the proxies actually decide.

A Center holds a policy with overlapping rules, a method wildcard, a `"*"` caller, a rate
limit and a rule in audit mode; song_service's in-proxy and an out-proxy for each of four
callers run from it. For every caller and method, `fastproxy explain --json` (a real CLI
process) must say what a real call through the caller's out-proxy meets: it passes (allowed,
or let through by audit mode: exit 0), it is denied (exit 3), or no service serves it (exit 3).
Then the service goes into audit mode as revision 2, and `--revision 1` still answers for
revision 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from conftest import launch_center
from support.dataplane import (
    CALLEE,
    CALLER,
    METERED,
    NARROW,
    STRANGER,
    Proxies,
    b64,
    call_kind,
    channel,
    free_address,
    poll,
    reason_of,
)
from support.upstream_app import UpstreamProcess

from fastproxy.v1 import center_pb2, center_pb2_grpc

FASTPROXY = str(Path(sys.executable).with_name("fastproxy"))
ECHO = "/test.v1.Echo"
KIND_OF = {f"{ECHO}/Unary": "unary", f"{ECHO}/ClientStream": "client_stream",
           f"{ECHO}/ServerStream": "server_stream", f"{ECHO}/Bidi": "bidi"}
CALLERS = (CALLER, NARROW, STRANGER, METERED)


def policy_yaml(in_address: str, song_mode: str = "enforce") -> str:
    keys = {name: b64(os.urandom(32)) for name in ("chat", "narrow", "stranger", "metered",
                                                   "song", "enc")}
    return f"""\
version: 1
keys:
  song-id: {{type: hmac-sha256, secret: "{keys['song']}"}}
  song-enc: {{type: chacha20-poly1305, secret: "{keys['enc']}"}}
  chat-id: {{type: hmac-sha256, secret: "{keys['chat']}"}}
  narrow-id: {{type: hmac-sha256, secret: "{keys['narrow']}"}}
  stranger-id: {{type: hmac-sha256, secret: "{keys['stranger']}"}}
  metered-id: {{type: hmac-sha256, secret: "{keys['metered']}"}}
services:
  {CALLEE}:
    grpc_services: [test.v1.Echo]
    endpoints: ["{in_address}"]
    identity: {{key: song-id}}
    encrypt: {{key: song-enc}}
    compress: {{algorithm: gzip, min_bytes: 512}}
    timeout_ms: 4000
    mode: {song_mode}
    allow:
      - caller: {CALLER}
        methods: ["{ECHO}/Unary"]
        rate_limit: {{rps: 1000, burst: 100}}
      - caller: "*"
        methods: ["{ECHO}/ServerStream"]
      - caller: {CALLER}
        methods: ["{ECHO}/*"]
      - caller: {NARROW}
        methods: ["{ECHO}/Unary"]
        mode: audit
      - caller: {METERED}
        methods: ["{ECHO}/Bidi", "{ECHO}/Unary"]
  {CALLER}: {{identity: {{key: chat-id}}}}
  {NARROW}: {{identity: {{key: narrow-id}}}}
  {STRANGER}: {{identity: {{key: stranger-id}}}}
  {METERED}: {{identity: {{key: metered-id}}}}
"""


@dataclass
class Stack:
    center: str
    outs: dict[str, str]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:

    directory = tmp_path_factory.mktemp("explain")
    in_address = free_address()
    center = launch_center((), directory / "center.log")
    try:
        apply(center.address, policy_yaml(in_address))
        with UpstreamProcess(name="song") as upstream:
            proxies = Proxies(directory)
            try:
                proxies.start("in", CALLEE, in_address, center=center.address,
                              upstream=upstream.address, wait=False)
                outs = {name: proxies.start("out", name, free_address(), wait=False,
                                            center=center.address)
                        for name in CALLERS}
                for proxy in proxies.started:
                    proxy.wait_status(1)
                yield Stack(center.address, {n: p.address for n, p in outs.items()})
            finally:
                proxies.stop_all()
    finally:
        assert center.terminate() == 0


def apply(center: str, yaml_text: str) -> int:
    with grpc.insecure_channel(center) as ch:
        reply = center_pb2_grpc.CenterStub(ch).ApplyPolicy(
            center_pb2.ApplyPolicyRequest(yaml=yaml_text), timeout=10)
    assert not reply.errors, list(reply.errors)
    return int(reply.revision.revision)


def explain(center: str, caller: str, method: str, *extra: str
            ) -> tuple[int, dict[str, object]]:
    done = subprocess.run([FASTPROXY, "explain", "--center", center, "--caller", caller,
                           "--method", method, "--json", *extra],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode in (0, 3), done.stderr
    return done.returncode, json.loads(done.stdout)


def outcome(out_address: str, method: str) -> str:
    """What a real call through the caller's out-proxy meets: passes, denied or no_route."""
    with channel(out_address) as ch:
        try:
            if method in KIND_OF:
                call_kind(ch, KIND_OF[method], b"explain me", timeout=5)
            else:
                ch.unary_unary(method)(b"?", timeout=5)
        except grpc.RpcError as err:
            reason = reason_of(err)
            assert reason in ("denied", "no_route"), (method, err)
            return str(reason)
    return "passes"


METHODS = (*KIND_OF, "/other.v1.Nobody/Call")


def test_explain_says_what_the_proxies_decide_for_every_caller_and_method(
        stack: Stack) -> None:
    expected = {
        (CALLER, f"{ECHO}/Unary"): ("allowed", f"services.{CALLEE}.allow[0]"),
        (CALLER, f"{ECHO}/Bidi"): ("allowed", f"services.{CALLEE}.allow[2]"),
        (CALLER, f"{ECHO}/ServerStream"): ("allowed", f"services.{CALLEE}.allow[1]"),
        (STRANGER, f"{ECHO}/ServerStream"): ("allowed", f"services.{CALLEE}.allow[1]"),
        (STRANGER, f"{ECHO}/Unary"): ("denied", "none"),
        (NARROW, f"{ECHO}/Unary"): ("allowed", f"services.{CALLEE}.allow[3]"),
        (NARROW, f"{ECHO}/Bidi"): ("would_deny", "none"),
        (METERED, f"{ECHO}/ClientStream"): ("denied", "none"),
    }
    for caller in CALLERS:
        for method in METHODS:
            code, answer = explain(stack.center, caller, method)
            verdict = answer["verdict"]
            actual = outcome(stack.outs[caller], method)
            assert actual == ("passes" if verdict in ("allowed", "would_deny") else verdict), \
                (caller, method, answer, actual)
            assert code == (0 if actual == "passes" else 3), (caller, method, answer)
            if (caller, method) in expected:
                assert (verdict, answer["rule"]) == expected[(caller, method)], answer
    _, narrow_bidi = explain(stack.center, NARROW, f"{ECHO}/Bidi")
    assert narrow_bidi["audit"] == f"services.{CALLEE}.allow[3]"


def test_explain_gives_the_limit_timeout_encryption_compression_and_endpoints(
        stack: Stack) -> None:
    code, answer = explain(stack.center, CALLER, f"{ECHO}/Unary")
    assert code == 0
    assert answer["rate_limit"] == {"rps": 1000.0, "burst": 100}
    assert answer["timeout_ms"] == 4000
    assert answer["encryption"] == "chacha20-poly1305 (key song-enc)"
    assert answer["compression"] == "gzip from 512 bytes"
    endpoints = answer["endpoints"]
    assert isinstance(endpoints, list) and [e["source"] for e in endpoints] == ["static"]
    done = subprocess.run([FASTPROXY, "explain", "--center", stack.center, "--caller",
                           STRANGER, "--method", f"{ECHO}/Unary"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 3
    assert "DENIED" in done.stdout and f"no rule of {CALLEE!r}" in done.stdout
    _, nowhere = explain(stack.center, CALLER, "/other.v1.Nobody/Call")
    assert nowhere["verdict"] == "no_route" and "callee" in nowhere
    bad = subprocess.run([FASTPROXY, "explain", "--center", stack.center, "--caller",
                          "ghost_service", "--method", f"{ECHO}/Unary"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1 and "unknown service 'ghost_service'" in bad.stderr


def test_a_service_switched_to_audit_mode_is_explained_and_passes_and_old_revisions_answer(
        stack: Stack) -> None:
    with grpc.insecure_channel(stack.center) as ch:
        info = center_pb2_grpc.CenterStub(ch).GetPolicy(center_pb2.GetPolicyRequest(),
                                                        timeout=5)
    before = info.revision.revision
    text = info.yaml.replace("mode: enforce", "mode: audit")
    revision = apply(stack.center, text)
    code, answer = explain(stack.center, STRANGER, f"{ECHO}/Unary")
    assert (code, answer["verdict"], answer["audit"]) == (0, "would_deny",
                                                          f"services.{CALLEE}")
    poll(lambda: outcome(stack.outs[STRANGER], f"{ECHO}/Unary") == "passes", 5,
         "the call let through in audit mode")
    code, old = explain(stack.center, STRANGER, f"{ECHO}/Unary", "--revision", str(before))
    assert (code, old["verdict"], old["revision"]) == (3, "denied", before)
    assert revision > before
