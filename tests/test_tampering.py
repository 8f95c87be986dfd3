"""An intermediary on the path attacks every part of a call (docs/security.md, P3 and P4).

1. Between the proxies: client -> out-proxy (`--tunnel off`: each call its own stream, as an
   intermediary sees it) -> TamperRelay -> in-proxy -> the test upstream. Each attack, on
   each RPC kind it applies to, ends in `unauthenticated`; the upstream never sees a tampered
   request stream end cleanly (the call never reaches it, or reaches it cancelled); the app
   never sees a forged status.
2. Between the embedded SDK and the embedded server (`python -m server_svc --service`): the
   same attacks; a call captured there and replayed (to the same server, to a second
   instance, to the same one restarted) is refused; no credential header or message body
   travels in the clear.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support.dataplane import (
    CALLEE,
    CALLER,
    Proxies,
    call_kind,
    channel,
    free_address,
    start_file_stack,
)
from support.server_helpers import Processes, ServiceProcess, demo_policy_yaml
from support.tamper import Captured, SyncUpstream, TamperRelay
from support.upstream_app import CONTROL_ECHO, CONTROL_ID, UpstreamProcess

import fastproxy
from fastproxy.v1 import demo_pb2, demo_pb2_grpc

KINDS = ("unary", "client_stream", "server_stream", "bidi")
SECRET = "Bearer CREDENTIAL-MARKER-7f3c"
BODY = b"BODY-MARKER-51c2"


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamProcess]:
    with UpstreamProcess(name="tampered") as process:
        yield process


@pytest.fixture(scope="module")
def proxied(upstream: UpstreamProcess, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[TamperRelay, str]]:
    """(the relay between the proxies, the out-proxy's address)."""
    directory = tmp_path_factory.mktemp("tampering")
    in_address = free_address()
    relay = TamperRelay(in_address).start()
    proxies = Proxies(directory)
    try:
        stack = start_file_stack(proxies, upstream.address, directory, endpoint=relay.address,
                                 in_address=in_address, extra=("--tunnel", "off"))
        yield relay, stack.outproxies[CALLER].address
    finally:
        proxies.stop_all()
        relay.stop()


def _metadata(call_id: str) -> tuple[tuple[str, str], ...]:
    return ((CONTROL_ID, call_id), (CONTROL_ECHO, "1"), ("x-echo-a", "b"),
            ("authorization", SECRET))


def _attacked(relay: TamperRelay, address: str, attack: str, kind: str,
              extra: tuple[tuple[str, str], ...] = ()) -> tuple[grpc.RpcError, str]:
    relay.attack = attack
    call_id = uuid.uuid4().hex
    try:
        with channel(address) as ch, pytest.raises(grpc.RpcError) as raised:
            call_kind(ch, kind, BODY, (*_metadata(call_id), *extra), timeout=5)
    finally:
        relay.attack = None
    return raised.value, call_id


def test_untampered_calls_of_every_kind_pass_the_relay(
        proxied: tuple[TamperRelay, str]) -> None:
    _, address = proxied
    with channel(address) as ch:
        for kind in KINDS:
            responses, call = call_kind(ch, kind, BODY, _metadata(uuid.uuid4().hex))
            assert responses and all(BODY in response for response in responses)
            assert dict(call.trailing_metadata())["x-echo-a"] == "b"
            assert dict(call.initial_metadata())["x-echo-a"] == "b"


def test_no_credential_or_body_travels_in_the_clear_between_the_proxies(
        proxied: tuple[TamperRelay, str]) -> None:
    relay, address = proxied
    before = len(relay.calls)
    with channel(address) as ch:
        for kind in KINDS:
            call_kind(ch, kind, BODY, _metadata(uuid.uuid4().hex))
    for captured in relay.calls[before:]:
        seen = b"".join((*captured.requests, *captured.responses,
                         *(v if isinstance(v, bytes) else v.encode()
                           for _, v in (*captured.metadata, *captured.initial,
                                        *captured.trailers))))
        assert BODY not in seen
        assert SECRET.encode() not in seen and b"CREDENTIAL-MARKER" not in seen


# (What follows the one request of a unary-request call, dropped or copied, has its own test
# below.)
ONE_REQUEST = ("unary", "server_stream")
AFTER_THE_REQUEST = ("drop_last_request", "duplicate_request")
REQUEST_ATTACKS = [(attack, kind) for attack in ("drop_last_request", "duplicate_request",
                                                 "rewrite_header", "add_header")
                   for kind in KINDS
                   if not (attack in AFTER_THE_REQUEST and kind in ONE_REQUEST)
                   ] + [("swap_requests", "client_stream"), ("swap_requests", "bidi")]


@pytest.fixture(scope="module")
def sync_proxied(tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[tuple[TamperRelay, str, SyncUpstream]]:
    """The proxies and the relay in front of a sync upstream (which tells a reset stream
    from a clean end)."""
    directory = tmp_path_factory.mktemp("tampering-sync")
    upstream = SyncUpstream()
    in_address = free_address()
    relay = TamperRelay(in_address).start()
    proxies = Proxies(directory)
    try:
        stack = start_file_stack(proxies, upstream.address, directory, endpoint=relay.address,
                                 in_address=in_address, extra=("--tunnel", "off"))
        yield relay, stack.outproxies[CALLER].address, upstream
    finally:
        proxies.stop_all()
        relay.stop()
        upstream.stop()


@pytest.mark.parametrize(("attack", "kind"), [(attack, kind) for attack in AFTER_THE_REQUEST
                                               for kind in ONE_REQUEST])
def test_what_follows_the_one_request_of_a_unary_request_call_is_refused_or_never_read(
        sync_proxied: tuple[TamperRelay, str, SyncUpstream], attack: str, kind: str) -> None:
    """Once the in-proxy knows the method takes one request, it serves it with a unary
    handler, and gRPC itself reads that one message and nothing after it (grpc.aio's unary
    server handler). So a copy added after the request, or the END record after it dropped,
    either meets a streaming handler (the kind not learned yet): unauthenticated; or is
    never looked at: the upstream gets the one genuine request, once, and the caller its
    genuine answer. Never anything else (docs/security.md, known limits)."""
    relay, address, upstream = sync_proxied
    relay.attack = attack
    call_id = uuid.uuid4().hex
    try:
        with channel(address) as ch:
            responses, _ = call_kind(ch, kind, BODY, _metadata(call_id), timeout=5)
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err
        return
    finally:
        relay.attack = None
    assert responses == [BODY] * (1 if kind == "unary" else 2)
    assert upstream.ends.get(call_id) == "clean"


@pytest.mark.parametrize(("attack", "kind"), REQUEST_ATTACKS)
def test_a_tampered_request_is_refused_and_never_ends_cleanly_at_the_upstream(
        sync_proxied: tuple[TamperRelay, str, SyncUpstream], attack: str, kind: str) -> None:
    relay, address, upstream = sync_proxied
    error, call_id = _attacked(relay, address, attack, kind)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (attack, kind, error)
    # Never reached, or reset: never a clean end of a stream the caller did not send.
    assert upstream.ends.get(call_id) in (None, "reset"), (attack, kind)


ANSWER_ATTACKS = [(attack, kind) for attack in (
    "drop_all_responses", "strip_end", "rewrite_status", "rewrite_trailer", "add_trailer",
    "rewrite_response_header") for kind in KINDS] + [
    ("drop_last_response", "server_stream"), ("drop_last_response", "bidi")]


@pytest.mark.parametrize(("attack", "kind"), ANSWER_ATTACKS)
def test_a_tampered_answer_never_reaches_the_app_as_genuine(
        proxied: tuple[TamperRelay, str], attack: str, kind: str) -> None:
    relay, address = proxied
    error, _ = _attacked(relay, address, attack, kind)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (attack, kind, error)
    assert dict(error.trailing_metadata() or ())["fastproxy-proxy"] == "out"


@pytest.mark.parametrize("attack", ["rewrite_status", "rewrite_details", "rewrite_trailer"])
@pytest.mark.parametrize("kind", KINDS)
def test_an_error_of_the_upstream_cannot_be_turned_into_another_answer(
        proxied: tuple[TamperRelay, str], attack: str, kind: str) -> None:
    relay, address = proxied
    error, _ = _attacked(relay, address, attack, kind,
                         (("x-test-fail-code", "NOT_FOUND"),
                          ("x-test-fail-details", "no such song")))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (attack, kind, error)


def test_an_untampered_error_of_the_upstream_arrives_as_it_was_sent(
        proxied: tuple[TamperRelay, str]) -> None:
    _, address = proxied
    for kind in KINDS:
        with channel(address) as ch, pytest.raises(grpc.RpcError) as raised:
            call_kind(ch, kind, BODY, (*_metadata(uuid.uuid4().hex),
                                       ("x-test-fail-code", "NOT_FOUND"),
                                       ("x-test-fail-details", "no such song")))
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        assert raised.value.details() == "no such song"
        trailers = dict(raised.value.trailing_metadata())
        assert trailers["x-echo-a"] == "b"
        assert not any(key.startswith("fastproxy-") for key in trailers)


# --- 2. between the embedded SDK and the embedded server ----------------------------------


@pytest.fixture(scope="module")
def embedded_setup(tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[tuple[Processes, Path]]:
    directory = tmp_path_factory.mktemp("embedded-tampering")
    policy_file = directory / "policy.yaml"
    policy_file.write_text(demo_policy_yaml())
    processes = Processes(directory)
    try:
        yield processes, policy_file
    finally:
        processes.stop_all()


def _embedded_server(setup: tuple[Processes, Path], address: str | None = None
                     ) -> ServiceProcess:
    processes, policy_file = setup
    return processes.start("server_svc", address or free_address(), "--service", CALLEE,
                           "--policy", str(policy_file))


@pytest.fixture(scope="module")
def embedded(embedded_setup: tuple[Processes, Path]) -> Iterator[TamperRelay]:
    relay = TamperRelay(_embedded_server(embedded_setup).address).start()
    try:
        yield relay
    finally:
        relay.stop()


@contextlib.contextmanager
def _stub(address: str, policy_file: Path) -> Iterator[demo_pb2_grpc.EchoStub]:
    interceptors = fastproxy.client_interceptors(service=CALLER, embedded=True,
                                                 policy_file=str(policy_file))
    with grpc.insecure_channel(address) as plain:
        yield demo_pb2_grpc.EchoStub(grpc.intercept_channel(plain, *interceptors))
    interceptors.close()


@pytest.fixture(scope="module")
def echo(embedded: TamperRelay, embedded_setup: tuple[Processes, Path]
         ) -> Iterator[demo_pb2_grpc.EchoStub]:
    with _stub(embedded.address, embedded_setup[1]) as stub:
        yield stub


def _demo_kind(echo: demo_pb2_grpc.EchoStub, kind: str) -> list[str]:
    metadata = (("x-echo-a", "b"), ("authorization", SECRET))
    request = demo_pb2.EchoRequest(text="BODY-MARKER-51c2", repeat=2)
    if kind == "unary":
        return [echo.Unary(request, metadata=metadata, timeout=5).text]
    if kind == "client_stream":
        return [echo.ClientStream(iter([request, request]), metadata=metadata,
                                  timeout=5).text]
    if kind == "server_stream":
        return [r.text for r in echo.ServerStream(request, metadata=metadata, timeout=5)]
    return [r.text for r in echo.Bidi(iter([request, request]), metadata=metadata, timeout=5)]


def test_embedded_calls_of_every_kind_pass_the_relay_with_nothing_in_the_clear(
        embedded: TamperRelay, echo: demo_pb2_grpc.EchoStub) -> None:
    before = len(embedded.calls)
    for kind in KINDS:
        assert all("BODY-MARKER" in text for text in _demo_kind(echo, kind))
    for captured in embedded.calls[before:]:
        seen = b"".join((*captured.requests, *captured.responses,
                         *(v if isinstance(v, bytes) else v.encode()
                           for _, v in (*captured.metadata, *captured.initial,
                                        *captured.trailers))))
        assert b"BODY-MARKER" not in seen and b"CREDENTIAL-MARKER" not in seen


@pytest.mark.parametrize("attack", ["drop_last_request", "duplicate_request", "rewrite_header",
                                    "add_header", "drop_all_responses", "strip_end",
                                    "rewrite_status", "add_trailer"])
@pytest.mark.parametrize("kind", KINDS)
def test_an_attack_between_the_embedded_sdk_and_server_is_refused(
        embedded: TamperRelay, echo: demo_pb2_grpc.EchoStub, attack: str, kind: str) -> None:
    embedded.attack = attack
    try:
        try:
            answer = _demo_kind(echo, kind)
        except grpc.RpcError as error:
            code = error.code()
        else:
            code, answer_ok = grpc.StatusCode.OK, all("BODY-MARKER" in a for a in answer)
    finally:
        embedded.attack = None
    one_request = kind in ("unary", "server_stream")
    if one_request and attack == "duplicate_request":
        # gRPC itself gives a one-request handler the first message and drops the copy: the
        # call is the caller's own, untouched.
        assert code == grpc.StatusCode.OK and answer_ok
    elif one_request and attack == "drop_last_request":
        # The one request never arrived: the server waits for it, as for a lost one.
        assert code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAUTHENTICATED)
    else:
        assert code == grpc.StatusCode.UNAUTHENTICATED, (attack, kind, code)


def _captured_unary(relay: TamperRelay, echo: demo_pb2_grpc.EchoStub) -> Captured:
    before = len(relay.calls)
    _demo_kind(echo, "unary")
    [captured] = [c for c in relay.calls[before:] if c.method == "/demo.v1.Echo/Unary"]
    return captured


def _refused_as(outcome: grpc.RpcError | list[bytes]) -> tuple[grpc.StatusCode, str, str]:
    assert isinstance(outcome, grpc.RpcError), outcome
    return (outcome.code(), outcome.details() or "",
            str(dict(outcome.trailing_metadata() or ()).get("fastproxy-session", "")))


def test_a_captured_embedded_call_is_refused_by_the_same_server_and_by_a_second_one(
        embedded: TamperRelay, echo: demo_pb2_grpc.EchoStub,
        embedded_setup: tuple[Processes, Path]) -> None:
    captured = _captured_unary(embedded, echo)
    code, details, _ = _refused_as(embedded.replay(captured))
    assert (code, "replayed" in details) == (grpc.StatusCode.UNAUTHENTICATED, True)
    second = _embedded_server(embedded_setup)
    code, _, session = _refused_as(embedded.replay(captured, second.address))
    assert (code, session) == (grpc.StatusCode.UNAUTHENTICATED, "unknown")


def test_a_captured_embedded_call_is_refused_by_the_same_server_after_a_restart(
        embedded_setup: tuple[Processes, Path]) -> None:
    server = _embedded_server(embedded_setup)
    relay = TamperRelay(server.address).start()
    try:
        with _stub(relay.address, embedded_setup[1]) as stub:
            captured = _captured_unary(relay, stub)
        assert server.terminate() == 0
        restarted = _embedded_server(embedded_setup, server.address)
        code, _, session = _refused_as(relay.replay(captured, restarted.address))
        assert (code, session) == (grpc.StatusCode.UNAUTHENTICATED, "unknown")
    finally:
        relay.stop()
