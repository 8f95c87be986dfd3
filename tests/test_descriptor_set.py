"""An upstream without server reflection, its kinds from `--descriptor-set` (issue 15): the
in-proxy knows its methods from the start and tells its out-proxies, so unary calls take the
fast path and the tunnel; streaming methods keep the stream path; a bad file or flag stops
the proxy with one line naming it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from support.dataplane import (
    CALLEE,
    CALLER,
    DataplanePolicy,
    Proxies,
    call_kind,
    channel,
    free_address,
    poll,
)
from support.transport import KINDS
from support.upstream_app import SERVICE, UNARY, UpstreamProcess

from proxy_svc.kinds import kinds_of_descriptor_set


def descriptor_set() -> bytes:
    """The test upstream's service as protoc would describe it."""
    package, _, name = SERVICE.rpartition(".")
    file = descriptor_pb2.FileDescriptorProto(name="echo.proto", package=package,
                                              syntax="proto3")
    file.message_type.add(name="Raw")
    raw = f".{package}.Raw"
    service = file.service.add(name=name)
    service.method.add(name="Unary", input_type=raw, output_type=raw)
    service.method.add(name="ClientStream", input_type=raw, output_type=raw,
                       client_streaming=True)
    service.method.add(name="ServerStream", input_type=raw, output_type=raw,
                       server_streaming=True)
    service.method.add(name="Bidi", input_type=raw, output_type=raw,
                       client_streaming=True, server_streaming=True)
    return descriptor_pb2.FileDescriptorSet(file=[file]).SerializeToString()


def test_kinds_of_a_descriptor_set() -> None:
    assert kinds_of_descriptor_set(descriptor_set()) == {
        f"/{SERVICE}/Unary": True, f"/{SERVICE}/ClientStream": False,
        f"/{SERVICE}/ServerStream": False, f"/{SERVICE}/Bidi": False}
    with pytest.raises(ValueError, match="not a serialized FileDescriptorSet"):
        kinds_of_descriptor_set(b"\xff\xff")
    with pytest.raises(ValueError, match="declares no service"):
        kinds_of_descriptor_set(b"")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Proxies]]:
    directory = tmp_path_factory.mktemp("descriptor-set")
    descriptors = directory / "echo.pb"
    descriptors.write_bytes(descriptor_set())
    in_address = free_address()
    policy = directory / "policy.yaml"
    policy.write_text(DataplanePolicy().with_(song_endpoints=(in_address,)).yaml_text())
    # The test upstream serves no reflection: the descriptor set is the only source.
    with UpstreamProcess(name="no-reflection-descriptors") as upstream:
        proxies = Proxies(directory)
        try:
            proxies.start("in", CALLEE, in_address, policy=policy, upstream=upstream.address,
                          extra=("--descriptor-set", str(descriptors)))
            out = proxies.start("out", CALLER, free_address(), policy=policy)
            yield out.address, proxies
        finally:
            proxies.stop_all()


def test_unary_methods_take_the_fast_path_without_reflection(
        stack: tuple[str, Proxies]) -> None:
    address, proxies = stack
    out = proxies.started[1]
    with channel(address) as ch:
        def told() -> bool:
            assert ch.unary_unary(UNARY)(b"kind?", timeout=10) == b"kind?"
            return f"method {UNARY} is unary (from the in-proxy's sealed end)" in out.log()

        poll(told, 15, "the out-proxy learning the unary method from the in-proxy",
             interval=0.1)
        for kind in KINDS:  # every kind still works; the streaming ones on the stream path
            responses, _ = call_kind(ch, kind, b"after")
            assert responses and all(b"after" in response for response in responses)
    assert out.log().count("is unary (from") == 1  # the one unary method, nothing else


@pytest.mark.parametrize(("args", "line"), [
    (("--role", "out", "--descriptor-set", "x.pb"), "--descriptor-set is for --role in"),
    (("--role", "in", "--upstream", "127.0.0.1:1", "--descriptor-set", "missing.pb"),
     "--descriptor-set missing.pb: No such file or directory"),
    (("--role", "in", "--upstream", "127.0.0.1:1", "--descriptor-set", "bad.pb"),
     "--descriptor-set bad.pb: not a serialized FileDescriptorSet"),
])
def test_a_bad_descriptor_set_stops_the_proxy_with_one_line(
        tmp_path: Path, args: tuple[str, ...], line: str) -> None:
    (tmp_path / "bad.pb").write_bytes(b"\xff\xff")
    (tmp_path / "policy.yaml").write_text(DataplanePolicy().yaml_text())
    done = subprocess.run(
        [sys.executable, "-m", "proxy_svc", "--service", CALLEE, "--listen", "127.0.0.1:1",
         "--policy", "policy.yaml", *args], cwd=tmp_path, capture_output=True, text=True,
        timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith(f"proxy_svc: error: {line}")
    assert len(done.stderr.strip().splitlines()) == 1
