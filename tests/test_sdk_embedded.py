"""The client SDK in embedded mode: the app's own channel points straight at the
destination's in-proxy (`python -m proxy_svc --role in`), and the interceptors route, sign,
seal every request and open every response with the pipeline's stages. The app uses the
unchanged generated demo stubs, sync and aio."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from support.dataplane import Proxies, free_address
from support.sdk_stack import (
    CALLEE,
    CALLER,
    FLAKY_UNARY,
    LONELY,
    OPTIONS,
    UpstreamServer,
    sdk_policy_yaml,
)

import fastproxy
from fastproxy.sdk import InterceptorSet
from fastproxy.v1 import demo_pb2, demo_pb2_grpc

pytestmark = pytest.mark.timeout(60)
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(in-proxy address, policy file) with the demo Echo behind the in-proxy."""
    directory = tmp_path_factory.mktemp("sdk-embedded")
    upstream = UpstreamServer().start()
    in_address = free_address()
    policy = directory / "policy.yaml"
    policy.write_text(sdk_policy_yaml(in_address))
    proxies = Proxies(directory)
    try:
        proxies.start("in", CALLEE, in_address, policy=policy, upstream=upstream.address)
        yield in_address, policy
    finally:
        proxies.stop_all()
        upstream.stop()


@pytest.fixture
def interceptors(stack: tuple[str, Path]) -> Iterator[InterceptorSet]:
    with fastproxy.client_interceptors(service=CALLER, embedded=True,
                                       policy_file=str(stack[1])) as made:
        yield made


@pytest.fixture
def echo(stack: tuple[str, Path], interceptors: InterceptorSet
         ) -> Iterator[demo_pb2_grpc.EchoStub]:
    with grpc.insecure_channel(stack[0], options=OPTIONS) as plain:
        yield demo_pb2_grpc.EchoStub(grpc.intercept_channel(plain, *interceptors))


def request(text: str, payload: bytes = b"", repeat: int = 0) -> demo_pb2.EchoRequest:
    return demo_pb2.EchoRequest(text=text, payload=payload, repeat=repeat)


def trailer(call: grpc.Call, key: str) -> str | bytes | None:
    return dict(call.trailing_metadata() or ()).get(key)


# --- sync -------------------------------------------------------------------------------


def test_unary_call_is_sealed_and_opened_with_unchanged_stubs(
        echo: demo_pb2_grpc.EchoStub) -> None:
    response, call = echo.Unary.with_call(request("hello"), timeout=10,
                                          metadata=(("x-echo-who", "me"),))
    assert isinstance(response, demo_pb2.EchoResponse)
    assert response.text == "hello"
    assert call.code() == grpc.StatusCode.OK
    assert ("x-echo-who", "me") in tuple(call.initial_metadata())
    assert trailer(call, "x-echo-count") == "1"


def test_the_channel_target_is_enough_when_the_policy_lists_no_endpoint(
        stack: tuple[str, Path], tmp_path: Path) -> None:
    text = stack[1].read_text()
    no_endpoints = tmp_path / "policy.yaml"
    no_endpoints.write_text(text.replace(f'endpoints: ["{stack[0]}"]', "endpoints: []"))
    assert no_endpoints.read_text() != text
    with fastproxy.client_interceptors(service=CALLER, embedded=True,
                                       policy_file=str(no_endpoints)) as made, \
            grpc.insecure_channel(stack[0], options=OPTIONS) as plain:
        echo = demo_pb2_grpc.EchoStub(grpc.intercept_channel(plain, *made))
        assert echo.Unary(request("no endpoint listed"), timeout=10).text == "no endpoint listed"


def test_client_stream_call(echo: demo_pb2_grpc.EchoStub) -> None:
    response = echo.ClientStream(iter([request("a", b"1"), request("b", b"2"),
                                       request("c", b"3")]), timeout=10)
    assert (response.text, response.payload, response.index) == ("a b c", b"123", 3)


def test_server_stream_keeps_the_call_interface(echo: demo_pb2_grpc.EchoStub) -> None:
    call = echo.ServerStream(request("x", repeat=3), timeout=10,
                             metadata=(("x-echo-k", "v"),))
    assert ("x-echo-k", "v") in tuple(call.initial_metadata())
    assert [r.index for r in call] == [0, 1, 2]
    assert call.code() == grpc.StatusCode.OK
    assert call.details() in (None, "")
    assert trailer(call, "x-echo-count") == "3"
    assert call.is_active() is False
    called: list[bool] = []
    assert call.add_callback(lambda: called.append(True)) is False  # already terminated


def test_bidi_stream(echo: demo_pb2_grpc.EchoStub) -> None:
    call = echo.Bidi(iter([request("a", repeat=2), request("b")]), timeout=10)
    assert [(r.text, r.index) for r in call] == [("a", 0), ("a", 1), ("b", 2)]
    assert trailer(call, "x-echo-count") == "3"


def test_cancel_of_a_server_stream(echo: demo_pb2_grpc.EchoStub) -> None:
    call = echo.ServerStream(request("x", repeat=50), timeout=10)
    assert next(call).index == 0
    assert call.cancel() is True
    with pytest.raises(grpc.RpcError) as caught:
        list(call)
    assert caught.value.code() == grpc.StatusCode.CANCELLED
    assert call.code() == grpc.StatusCode.CANCELLED


def test_one_mib_payload_round_trips_every_kind(echo: demo_pb2_grpc.EchoStub) -> None:
    payload = bytes(range(256)) * 4096
    assert echo.Unary(request("big", payload), timeout=20).payload == payload
    assert echo.ClientStream(iter([request("big", payload)]), timeout=20).payload == payload
    assert [r.payload for r in echo.ServerStream(request("big", payload),
                                                 timeout=20)] == [payload]
    assert [r.payload for r in echo.Bidi(iter([request("big", payload)]),
                                         timeout=20)] == [payload]


def test_future_unary_call(echo: demo_pb2_grpc.EchoStub) -> None:
    future = echo.Unary.future(request("later"), timeout=10)
    assert future.result(timeout=10).text == "later"
    assert future.code() == grpc.StatusCode.OK
    done: list[object] = []
    future.add_done_callback(done.append)
    assert done == [future]


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [record.fields for record in caplog.records  # type: ignore[attr-defined]
            if record.name == "fastproxy.audit"]


def test_a_method_no_service_serves_fails_with_no_route(
        stack: tuple[str, Path], interceptors: InterceptorSet,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="fastproxy.audit")
    with grpc.insecure_channel(stack[0]) as plain:
        channel = grpc.intercept_channel(plain, *interceptors)
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary("/other.v1.Nowhere/Call")(b"x", timeout=5)
        stream = channel.unary_stream("/other.v1.Nowhere/Stream")(b"x", timeout=5)
        with pytest.raises(grpc.RpcError):
            next(stream)
    error = caught.value
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert trailer(error, "fastproxy-error") == "no_route"
    assert trailer(error, "fastproxy-proxy") == "client"
    assert stream.code() == grpc.StatusCode.UNIMPLEMENTED
    assert trailer(stream, "fastproxy-error") == "no_route"
    # Each refusal of the SDK is one audit line, as an out-proxy writes for its own.
    audits = audit_lines(caplog)
    assert [(a["method"], a["reason"]) for a in audits] == [
        ("/other.v1.Nowhere/Call", "no_route"), ("/other.v1.Nowhere/Stream", "no_route")]
    for audit in audits:
        assert (audit["event"], audit["proxy"], audit["caller"]) == ("refused", "client", CALLER)
        assert audit["revision"] >= 1


def test_a_caller_no_rule_names_is_denied_by_its_own_sdk(
        stack: tuple[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    """Denied means denied: the SDK knows song_service exists (no key, no endpoint of it)
    and refuses lonely_service's call itself, naming caller, callee and method."""
    caplog.set_level(logging.WARNING, logger="fastproxy.audit")
    with fastproxy.client_interceptors(service=LONELY, embedded=True,
                                       policy_file=str(stack[1])) as lonely, \
            grpc.insecure_channel(stack[0]) as plain:
        echo = demo_pb2_grpc.EchoStub(grpc.intercept_channel(plain, *lonely))
        with pytest.raises(grpc.RpcError) as caught:
            echo.Unary(request("may I?"), timeout=5)
    error = caught.value
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert trailer(error, "fastproxy-error") == "denied"
    assert trailer(error, "fastproxy-proxy") == "client"
    assert trailer(error, "fastproxy-rule") == "none"
    assert error.details() == (f"no rule of {CALLEE!r} lets {LONELY!r} call "
                               "/demo.v1.Echo/Unary (policy revision 1, rule none)")
    [audit] = audit_lines(caplog)
    assert (audit["caller"], audit["callee"], audit["reason"], audit["rule"]) == (
        LONELY, CALLEE, "denied", "none")


def test_a_response_from_a_plain_server_is_refused_as_unauthenticated(
        stack: tuple[str, Path], interceptors: InterceptorSet,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="fastproxy.audit")
    upstream = UpstreamServer().start()  # answers in plaintext: no envelope to open
    try:
        with grpc.insecure_channel(upstream.address) as plain:
            echo = demo_pb2_grpc.EchoStub(grpc.intercept_channel(plain, *interceptors))
            with pytest.raises(grpc.RpcError) as caught:
                echo.Unary(request("hi"), timeout=5)
    finally:
        upstream.stop()
    assert caught.value.code() in (grpc.StatusCode.INVALID_ARGUMENT,
                                   grpc.StatusCode.UNAUTHENTICATED)
    assert trailer(caught.value, "fastproxy-proxy") == "client"
    [audit] = audit_lines(caplog)
    assert (audit["caller"], audit["callee"], audit["method"]) == (
        CALLER, CALLEE, "/demo.v1.Echo/Unary")
    assert audit["reason"] == trailer(caught.value, "fastproxy-error")


def test_calls_wait_for_the_first_policy_then_fail_unavailable(
        stack: tuple[str, Path]) -> None:
    nobody = free_address()  # a Center that never answers
    with fastproxy.client_interceptors(service=CALLER, center=nobody, embedded=True
                                       ) as waiting, grpc.insecure_channel(stack[0]) as plain:
        echo = demo_pb2_grpc.EchoStub(grpc.intercept_channel(plain, *waiting))
        with pytest.raises(grpc.RpcError) as caught:
            echo.Unary(request("too early"), timeout=0.5)
        stream = echo.ServerStream(request("too early"), timeout=0.3)
        with pytest.raises(grpc.RpcError):
            list(stream)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert trailer(caught.value, "fastproxy-error") == "unavailable"
    assert trailer(caught.value, "fastproxy-proxy") == "client"
    assert stream.code() == grpc.StatusCode.UNAVAILABLE


def test_policy_from_a_center_as_a_client_node(
        stack: tuple[str, Path], start_center: object) -> None:
    assert callable(start_center)
    center = start_center("--policy", str(stack[1]))
    with fastproxy.client_interceptors(service=CALLER, center=center.address,
                                       embedded=True) as made, \
            grpc.insecure_channel(stack[0]) as plain:
        echo = demo_pb2_grpc.EchoStub(grpc.intercept_channel(plain, *made))
        # no wait_for_policy: the first call waits for the policy itself
        assert echo.Unary(request("via center"), timeout=10).text == "via center"


def grpcs_own_entry_type(address: str) -> type:
    """The type of a metadata entry in an error grpc itself raised (a plain call the
    in-proxy refuses, with its trailers)."""
    with grpc.insecure_channel(address) as plain, pytest.raises(grpc.RpcError) as caught:
        plain.unary_unary("/demo.v1.Echo/Unary")(b"", timeout=5)
    entries = tuple(caught.value.trailing_metadata())
    assert entries
    return type(entries[0])


def assert_as_grpc_gives(metadata: Any, entry_type: type) -> None:
    """A tuple of entries of grpc's own type, each a (key, value) tuple with .key/.value."""
    assert isinstance(metadata, tuple)
    for entry in metadata:
        assert type(entry) is entry_type
        key, value = entry
        assert (entry.key, entry.value) == (key, value)


def test_metadata_the_app_gets_has_the_types_of_grpcs_own(
        stack: tuple[str, Path], interceptors: InterceptorSet,
        echo: demo_pb2_grpc.EchoStub) -> None:
    """Code written for grpc (`m.key`, `m.value`) works on what the SDK hands back: its own
    refusals, the checked answers of sealed calls and the callee's checked failures."""
    entry_type = grpcs_own_entry_type(stack[0])
    with grpc.insecure_channel(stack[0]) as plain:
        channel = grpc.intercept_channel(plain, *interceptors)
        with pytest.raises(grpc.RpcError) as refused:
            channel.unary_unary("/other.v1.Nowhere/Call")(b"x", timeout=5)
        stream = channel.unary_stream("/other.v1.Nowhere/Stream")(b"x", timeout=5)
        with pytest.raises(grpc.RpcError):
            next(stream)
        with pytest.raises(grpc.RpcError) as failed:  # the callee's own error, checked
            channel.unary_unary(FLAKY_UNARY)(b"x", timeout=5, metadata=(
                ("x-call-id", uuid.uuid4().hex), ("x-fail-first", "1"),
                ("x-fail-code", "NOT_FOUND")))
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    assert {m.key: m.value for m in refused.value.trailing_metadata()}[
        "fastproxy-error"] == "no_route"
    _, unary = echo.Unary.with_call(request("u"), timeout=10, metadata=(("x-echo-a", "1"),))
    server_stream = echo.ServerStream(request("s", repeat=2), timeout=10,
                                      metadata=(("x-echo-b", "2"),))
    assert len(list(server_stream)) == 2
    for call in (refused.value, stream, failed.value, unary, server_stream):
        assert_as_grpc_gives(call.initial_metadata(), entry_type)
        assert_as_grpc_gives(call.trailing_metadata(), entry_type)
    assert [(m.key, m.value) for m in unary.initial_metadata()] == [("x-echo-a", "1")]
    assert [(m.key, m.value) for m in server_stream.trailing_metadata()] == [
        ("x-echo-count", "2")]


# --- aio --------------------------------------------------------------------------------


def test_aio_every_kind_with_the_call_interface(stack: tuple[str, Path]) -> None:
    async def scenario() -> None:
        made = fastproxy.aio_client_interceptors(service=CALLER, embedded=True,
                                                 policy_file=str(stack[1]))
        try:
            async with grpc.aio.insecure_channel(stack[0], interceptors=made,
                                                 options=OPTIONS) as channel:
                echo = demo_pb2_grpc.EchoStub(channel)
                unary = echo.Unary(request("u"), timeout=10, metadata=(("x-echo-a", "1"),))
                assert (await unary).text == "u"
                assert ("x-echo-a", "1") in tuple(await unary.initial_metadata())
                assert await unary.code() == grpc.StatusCode.OK
                assert (await unary.trailing_metadata())["x-echo-count"] == "1"

                async def requests() -> object:
                    for text in ("a", "b"):
                        yield request(text)

                joined = await echo.ClientStream(requests(), timeout=10)
                assert joined.text == "a b"

                stream = echo.ServerStream(request("s", repeat=3), timeout=10)
                assert [r.index async for r in stream] == [0, 1, 2]
                assert await stream.code() == grpc.StatusCode.OK
                assert (await stream.trailing_metadata())["x-echo-count"] == "3"

                bidi = echo.Bidi(iter([request("x"), request("y")]), timeout=10)
                first = await bidi.read()
                second = await bidi.read()
                assert (first.text, second.text) == ("x", "y")
                assert await bidi.read() is grpc.aio.EOF

                payload = b"\x01" * MiB
                assert (await echo.Unary(request("big", payload), timeout=20)).payload == payload

                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await channel.unary_unary("/other.v1.Nowhere/Call")(b"x", timeout=5)
                assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
                assert caught.value.trailing_metadata()["fastproxy-proxy"] == "client"
        finally:
            made.close()

    asyncio.run(scenario())


def test_aio_bidi_and_client_stream_with_write_and_done_writing(
        stack: tuple[str, Path]) -> None:
    async def scenario() -> None:
        made = fastproxy.aio_client_interceptors(service=CALLER, embedded=True,
                                                 policy_file=str(stack[1]))
        try:
            async with grpc.aio.insecure_channel(stack[0], interceptors=made,
                                                 options=OPTIONS) as channel:
                echo = demo_pb2_grpc.EchoStub(channel)
                bidi = echo.Bidi(timeout=10)
                for text in ("p", "q"):
                    await bidi.write(request(text))
                    assert (await bidi.read()).text == text
                await bidi.done_writing()
                assert await bidi.read() is grpc.aio.EOF
                assert await bidi.code() == grpc.StatusCode.OK

                joined = echo.ClientStream(timeout=10)
                await joined.write(request("one"))
                await joined.write(request("two"))
                await joined.done_writing()
                assert (await joined).text == "one two"
        finally:
            made.close()

    asyncio.run(scenario())


def test_aio_calls_wait_for_the_first_policy_then_fail_unavailable(
        stack: tuple[str, Path]) -> None:
    async def scenario() -> None:
        made = fastproxy.aio_client_interceptors(service=CALLER, center=free_address(),
                                                 embedded=True)
        try:
            async with grpc.aio.insecure_channel(stack[0], interceptors=made) as channel:
                echo = demo_pb2_grpc.EchoStub(channel)
                call = echo.Unary(request("early"), timeout=0.4)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
                assert await call.code() == grpc.StatusCode.UNAVAILABLE
                # grpc.aio.Metadata ([key] is the first value; dict() of it differs by version)
                trailers = await call.trailing_metadata()
                assert trailers["fastproxy-error"] == "unavailable"
                assert trailers["fastproxy-proxy"] == "client"
        finally:
            made.close()

    asyncio.run(scenario())


def test_aio_refusals_are_audit_lines_too(stack: tuple[str, Path],
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="fastproxy.audit")

    async def scenario() -> None:
        made = fastproxy.aio_client_interceptors(service=CALLER, embedded=True,
                                                 policy_file=str(stack[1]))
        try:
            async with grpc.aio.insecure_channel(stack[0], interceptors=made) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await channel.unary_unary("/other.v1.Nowhere/Call")(b"x", timeout=5)
                assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
                stream = channel.unary_stream("/other.v1.Nowhere/Stream")(b"x", timeout=5)
                with pytest.raises(grpc.aio.AioRpcError):
                    await stream.read()
        finally:
            made.close()

    asyncio.run(scenario())
    audits = audit_lines(caplog)
    assert [(a["method"], a["reason"], a["proxy"], a["caller"]) for a in audits] == [
        ("/other.v1.Nowhere/Call", "no_route", "client", CALLER),
        ("/other.v1.Nowhere/Stream", "no_route", "client", CALLER)]


def test_aio_metadata_the_app_gets_is_grpc_aios_metadata(stack: tuple[str, Path]) -> None:
    """The aio twin: what grpc.aio gives (`grpc.aio.Metadata`), for the SDK's refusals,
    checked answers and the callee's checked failures."""
    async def scenario() -> None:
        made = fastproxy.aio_client_interceptors(service=CALLER, embedded=True,
                                                 policy_file=str(stack[1]))
        try:
            async with grpc.aio.insecure_channel(stack[0], interceptors=made) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await channel.unary_unary("/other.v1.Nowhere/Call")(b"x", timeout=5)
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await channel.unary_unary(FLAKY_UNARY)(b"x", timeout=5, metadata=(
                        ("x-call-id", uuid.uuid4().hex), ("x-fail-first", "1"),
                        ("x-fail-code", "NOT_FOUND")))
                unary = demo_pb2_grpc.EchoStub(channel).Unary(
                    request("u"), timeout=10, metadata=(("x-echo-a", "1"),))
                await unary
                stream = demo_pb2_grpc.EchoStub(channel).ServerStream(request("s"),
                                                                      timeout=10)
                assert len([r async for r in stream]) == 1
                for error in (refused.value, failed.value):
                    assert isinstance(error.initial_metadata(), grpc.aio.Metadata)
                    assert isinstance(error.trailing_metadata(), grpc.aio.Metadata)
                for call in (unary, stream):
                    assert isinstance(await call.initial_metadata(), grpc.aio.Metadata)
                    assert isinstance(await call.trailing_metadata(), grpc.aio.Metadata)
                assert refused.value.trailing_metadata()["fastproxy-error"] == "no_route"
                assert (await unary.initial_metadata())["x-echo-a"] == "1"
                assert (await stream.trailing_metadata())["x-echo-count"] == "1"
        finally:
            made.close()

    asyncio.run(scenario())
