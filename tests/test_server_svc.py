"""`python -m server_svc` and embedded mode, as specifications.

Plain mode: the demo services (every Echo kind, the Catalog's lookups, listings, writes,
errors with details and metadata), health and reflection, bad flags, SIGTERM.
Embedded mode: an out-proxy reaches a server that does the in-proxy's job itself, found
through the Center's registry; plain calls straight to it are refused; and the sync twin of
the interceptors does the same inside this test process.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from conftest import StartCenter, free_port
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from support.dataplane import new_call, reply_of
from support.server_helpers import (
    CALLEE,
    CALLER,
    SERVING,
    Processes,
    SyncEchoServicer,
    assert_echoed,
    demo_policy_yaml,
    echo_all_kinds,
    health_status,
)

import server_svc
from fastproxy.pipeline.handshake import CARRY_METHOD
from fastproxy.pipeline.node_policy import NodePolicy
from fastproxy.pipeline.stages import OutboundCall
from fastproxy.policy import load_policy
from fastproxy.policy.scope import scope_snapshot
from fastproxy.v1 import demo_pb2, demo_pb2_grpc
from fastproxy.v1 import policy_pb2 as pb

pytestmark = pytest.mark.timeout(60)


def address() -> str:
    return f"127.0.0.1:{free_port()}"


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    yield started
    started.stop_all()


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    started = Processes(tmp_path_factory.mktemp("plain"))
    server = started.start("server_svc", address())
    yield server.address
    started.stop_all()


@pytest.fixture(scope="module")
def channel(plain_server: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(plain_server) as opened:
        yield opened


def trailer(error: grpc.RpcError, key: str) -> str | bytes | None:
    call: grpc.Call = error
    return dict(call.trailing_metadata() or ()).get(key)


# --- plain mode: the demo services -----------------------------------------------------


def test_echo_answers_every_rpc_kind_with_metadata(channel: grpc.Channel) -> None:
    assert_echoed(echo_all_kinds(channel))


def test_catalog_unknown_id_is_not_found_with_resource_info(channel: grpc.Channel) -> None:
    catalog = demo_pb2_grpc.CatalogStub(channel)
    with pytest.raises(grpc.RpcError) as raised:
        catalog.GetItem(demo_pb2.GetItemRequest(id="no-such-item"), timeout=5)
    error = raised.value
    assert error.code() == grpc.StatusCode.NOT_FOUND
    status = rpc_status.from_call(error)
    assert status is not None and len(status.details) == 1
    info = error_details_pb2.ResourceInfo()
    assert status.details[0].Unpack(info)
    assert (info.resource_type, info.resource_name) == ("demo.v1.Item", "no-such-item")
    assert trailer(error, "x-catalog-revision") is not None


def test_catalog_lookup_carries_the_revision_in_headers_and_trailers(
        channel: grpc.Channel) -> None:
    item, call = demo_pb2_grpc.CatalogStub(channel).GetItem.with_call(
        demo_pb2.GetItemRequest(id="book-002"), timeout=5)
    assert item.name == "Rust in Practice"
    initial = dict(call.initial_metadata())
    assert initial["x-catalog-revision"] == dict(call.trailing_metadata())["x-catalog-revision"]


def test_catalog_lists_with_filters_and_pages(channel: grpc.Channel) -> None:
    catalog = demo_pb2_grpc.CatalogStub(channel)
    books = [i.id for i in catalog.ListItems(demo_pb2.ListItemsRequest(category="books"),
                                             timeout=5)]
    assert books == ["book-001", "book-002", "book-003"]
    first = [i.id for i in catalog.ListItems(
        demo_pb2.ListItemsRequest(category="books", page_size=2), timeout=5)]
    rest = [i.id for i in catalog.ListItems(
        demo_pb2.ListItemsRequest(category="books", after_id=first[-1]), timeout=5)]
    assert (first, rest) == (["book-001", "book-002"], ["book-003"])
    garden = [i.id for i in catalog.ListItems(
        demo_pb2.ListItemsRequest(name_contains="GARDEN"), timeout=5)]
    assert garden == ["book-001", "tool-001"]


def test_catalog_put_validates_then_stores_and_counts(channel: grpc.Channel) -> None:
    catalog = demo_pb2_grpc.CatalogStub(channel)
    with pytest.raises(grpc.RpcError) as raised:
        catalog.PutItem(demo_pb2.PutItemRequest(item=demo_pb2.Item(id="bad id!", price_cents=-1)),
                        timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(raised.value)
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    assert sorted(v.field for v in bad.field_violations) == [
        "item.id", "item.name", "item.price_cents"]

    before = catalog.Count(demo_pb2.CountRequest(category="garden-gear"), timeout=5).count
    put = catalog.PutItem(demo_pb2.PutItemRequest(item=demo_pb2.Item(
        id="gear-001", name="Hose", category="garden-gear", price_cents=1200)), timeout=5)
    assert put.created and put.item.name == "Hose"
    again = catalog.PutItem(demo_pb2.PutItemRequest(item=demo_pb2.Item(
        id="gear-001", name="Long hose", category="garden-gear")), timeout=5)
    assert not again.created and again.revision == put.revision + 1
    assert catalog.GetItem(demo_pb2.GetItemRequest(id="gear-001"), timeout=5).name == "Long hose"
    assert catalog.Count(demo_pb2.CountRequest(category="garden-gear"),
                         timeout=5).count == before + 1


def test_health_and_reflection_are_served(plain_server: str, channel: grpc.Channel) -> None:
    for name in ("", "demo.v1.Echo", "demo.v1.Catalog"):
        assert health_status(plain_server, name) == SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = list(stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"demo.v1.Echo", "demo.v1.Catalog", "grpc.health.v1.Health"} <= names


# --- the command line ------------------------------------------------------------------


@pytest.mark.parametrize(("flags", "says"), [
    ([], "--listen"),
    (["--listen", "nowhere"], "HOST:PORT"),
    (["--listen", "127.0.0.1:1", "--service", "song_service"], "--center"),
    (["--listen", "127.0.0.1:1", "--center", "127.0.0.1:2"], "--service"),
    (["--listen", "127.0.0.1:1", "--service", "s", "--policy", "/no/such/file.yaml"],
     "no such file"),
    (["--listen", "127.0.0.1:1", "--service", "s", "--center", "127.0.0.1:2",
      "--policy", "p.yaml"], "not allowed with"),
    (["--listen", "127.0.0.1:0", "--service", "s", "--center", "127.0.0.1:2"], "--advertise"),
    (["--listen", "127.0.0.1:1", "--grace", "soon"], "--grace"),
])
def test_bad_flags_end_with_one_clear_line(flags: list[str], says: str) -> None:
    done = subprocess.run([sys.executable, "-m", "server_svc", *flags], capture_output=True,
                          text=True, timeout=20)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("server_svc: error: ")
    assert says in lines[0]


def test_a_policy_file_that_fails_validation_is_refused_at_start(tmp_path: Path) -> None:
    policy = tmp_path / "bad.yaml"
    policy.write_text("version: 1\nservices:\n  song_service: {colour: red}\n")
    done = subprocess.run([sys.executable, "-m", "server_svc", "--listen", address(),
                           "--service", CALLEE, "--policy", str(policy)],
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 1
    assert done.stderr.startswith(f"server_svc: error: --policy {policy} refused")
    assert "colour" in done.stderr


def test_sigterm_drains_and_exits_zero(processes: Processes) -> None:
    server = processes.start("server_svc", address(), "--grace", "5")
    with grpc.insecure_channel(server.address) as opened:
        responses = demo_pb2_grpc.EchoStub(opened).ServerStream(
            demo_pb2.EchoRequest(text="t", repeat=2), timeout=10)
        assert next(responses).index == 0
        assert server.terminate() == 0
    assert "stopped" in server.log()


# --- embedded mode ---------------------------------------------------------------------


def test_out_proxy_reaches_an_embedded_server_registered_at_the_center(
        start_center: StartCenter, processes: Processes, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(demo_policy_yaml())  # no static endpoints for song_service
    center = start_center("--policy", str(policy))
    server = processes.start("server_svc", address(), "--service", CALLEE,
                             "--center", center.address)
    out = processes.start("proxy_svc", address(), "--role", "out", "--service", CALLER,
                          "--center", center.address)
    with grpc.insecure_channel(out.address) as through_proxy:
        assert_echoed(echo_all_kinds(through_proxy))
        catalog = demo_pb2_grpc.CatalogStub(through_proxy)
        with pytest.raises(grpc.RpcError) as raised:
            catalog.GetItem(demo_pb2.GetItemRequest(id="missing"), timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert trailer(raised.value, "fastproxy-error") is None  # the app's own error

    with grpc.insecure_channel(server.address) as direct:
        with pytest.raises(grpc.RpcError) as refused:
            demo_pb2_grpc.EchoStub(direct).Unary(demo_pb2.EchoRequest(text="plain"),
                                                 timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert trailer(refused.value, "fastproxy-error") == "unauthenticated"
        assert trailer(refused.value, "fastproxy-proxy") == "in"
        with pytest.raises(grpc.RpcError) as refused_stream:
            list(demo_pb2_grpc.EchoStub(direct).Bidi(iter([demo_pb2.EchoRequest()]),
                                                     timeout=5))
        assert refused_stream.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as unknown_method:  # no method names leak
            direct.unary_unary("/demo.v1.Secret/Probe")(b"", timeout=5)
        assert unknown_method.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert health_status(server.address) == SERVING  # health stays open to plain calls


def test_sync_server_interceptors_open_and_seal_in_process(
        processes: Processes, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="fastproxy.audit")
    port = free_port()
    policy = tmp_path / "policy.yaml"
    policy.write_text(demo_policy_yaml(song_endpoints=[f"127.0.0.1:{port}"],
                                       chat_methods=["/demo.v1.Echo/*"]))
    interceptors = server_svc.server_interceptors(service=CALLEE, policy_file=str(policy))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=interceptors)
    demo_pb2_grpc.add_EchoServicer_to_server(SyncEchoServicer(), server)
    demo_pb2_grpc.add_CatalogServicer_to_server(demo_pb2_grpc.CatalogServicer(), server)
    assert server.add_insecure_port(f"127.0.0.1:{port}") == port
    server.start()
    try:
        out = processes.start("proxy_svc", address(), "--role", "out", "--service", CALLER,
                              "--policy", str(policy))
        with grpc.insecure_channel(out.address) as through_proxy:
            assert_echoed(echo_all_kinds(through_proxy))
            with pytest.raises(grpc.RpcError) as denied:
                demo_pb2_grpc.CatalogStub(through_proxy).Count(demo_pb2.CountRequest(),
                                                               timeout=5)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert trailer(denied.value, "fastproxy-error") == "denied"
        assert trailer(denied.value, "fastproxy-proxy") == "in"
        with grpc.insecure_channel(out.address) as through_proxy:
            # streaming refusals reach the out-proxy's aio client with our status, every time
            for _ in range(20):
                with pytest.raises(grpc.RpcError) as denied_stream:
                    list(demo_pb2_grpc.CatalogStub(through_proxy).ListItems(
                        demo_pb2.ListItemsRequest(), timeout=5))
                assert denied_stream.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert trailer(denied_stream.value, "fastproxy-error") == "denied"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as direct, \
                pytest.raises(grpc.RpcError) as refused:
            demo_pb2_grpc.EchoStub(direct).ClientStream(iter([demo_pb2.EchoRequest()]),
                                                        timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert trailer(refused.value, "fastproxy-error") == "unauthenticated"
        # every refusal is one audit line, as the in-proxy writes them
        audits = [record.fields for record in caplog.records  # type: ignore[attr-defined]
                  if record.name == "fastproxy.audit"]
        expected = {"event": "refused", "proxy": "in", "caller": CALLER, "callee": CALLEE,
                    "method": "/demo.v1.Catalog/Count", "reason": "denied", "revision": 1}
        assert expected.items() <= audits[0].items()
        assert audits[0]["peer"].startswith("ipv")
        assert [a["reason"] for a in audits] == ["denied"] * 21 + ["unauthenticated"]
    finally:
        server.stop(0)
        for interceptor in interceptors:
            assert isinstance(interceptor, server_svc.SealingServerInterceptor)
            interceptor.policy.stop()


# --- embedded mode: crafted sealed calls, against the aio process and the sync twin ----------


@pytest.fixture(params=["aio process", "sync in-process"])
def embedded_host(request: pytest.FixtureRequest, processes: Processes,
                  tmp_path: Path) -> Iterator[tuple[str, NodePolicy]]:
    """An embedded song_service from a policy file, and chat_service's compiled out-node
    policy (to seal calls by hand; the calls go to the host, not to the endpoint listed)."""
    text = demo_policy_yaml(song_endpoints=["127.0.0.1:9"])
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(text)
    chat = NodePolicy.from_snapshot(scope_snapshot(load_policy(text), pb.ROLE_OUT, CALLER))
    if request.param == "aio process":
        host = processes.start("server_svc", address(), "--service", CALLEE,
                               "--policy", str(policy_file))
        yield host.address, chat
        return
    interceptors = server_svc.server_interceptors(service=CALLEE, policy_file=str(policy_file))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=interceptors)
    demo_pb2_grpc.add_EchoServicer_to_server(SyncEchoServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", chat
    server.stop(0)
    for interceptor in interceptors:
        assert isinstance(interceptor, server_svc.SealingServerInterceptor)
        interceptor.policy.stop()


UNARY = "/demo.v1.Echo/Unary"
BIDI = "/demo.v1.Echo/Bidi"


def sealed_call(chat: NodePolicy, method: str, target: str) -> OutboundCall:
    """A call sealed here, in a session opened with the embedded server at `target`."""
    return new_call(chat, target, method)


def raw_unary(target: str, method: str, message: bytes,
              metadata: tuple[tuple[str, str | bytes], ...],
              call: OutboundCall | None = None) -> bytes:
    """The answer of a raw unary call, opened and checked with `call` when given."""
    with grpc.insecure_channel(target) as opened:
        answer, rpc = opened.unary_unary(method).with_call(message, metadata=metadata,
                                                          timeout=5)
    return reply_of(call, answer, rpc) if call is not None else bytes(answer)


def raw_bidi(target: str, method: str, messages: list[bytes],
             metadata: tuple[tuple[str, bytes], ...]) -> list[bytes]:
    with grpc.insecure_channel(target) as opened:
        return list(opened.stream_stream(method)(iter(messages), metadata=metadata, timeout=5))


def test_a_sealed_call_is_opened_and_answered_sealed(
        embedded_host: tuple[str, NodePolicy]) -> None:
    target, chat = embedded_host
    call = sealed_call(chat, UNARY, target)
    plain = demo_pb2.EchoRequest(text="PLAINTEXT-MARKER").SerializeToString()
    sealed = call.seal_request(plain, final=True)
    assert b"PLAINTEXT-MARKER" not in sealed
    with grpc.insecure_channel(target) as opened:
        answer, rpc = opened.unary_unary(UNARY).with_call(sealed, metadata=call.metadata,
                                                         timeout=5)
    assert b"PLAINTEXT-MARKER" not in answer
    opened_reply = demo_pb2.EchoResponse.FromString(reply_of(call, answer, rpc))
    assert opened_reply.text == "PLAINTEXT-MARKER"

    bidi = sealed_call(chat, BIDI, target)
    requests = [bidi.seal_request(demo_pb2.EchoRequest(text=t).SerializeToString())
                for t in ("one", "two")]
    end = bidi.end_requests()
    assert end is not None
    answers = raw_bidi(target, BIDI, [*requests, end], bidi.metadata)
    assert [demo_pb2.EchoResponse.FromString(bidi.open_response(a)).text
            for a in answers] == ["one", "two"]


def assert_refused(error: grpc.RpcError, code: grpc.StatusCode, reason: str) -> None:
    assert error.code() == code, error
    assert trailer(error, "fastproxy-error") == reason
    assert trailer(error, "fastproxy-proxy") == "in"


def test_garbage_or_tampered_messages_are_refused_with_the_reason(
        embedded_host: tuple[str, NodePolicy]) -> None:
    target, chat = embedded_host
    call = sealed_call(chat, UNARY, target)
    with pytest.raises(grpc.RpcError) as garbage:
        raw_unary(target, UNARY, b"\xff\x00not a sealed message", call.metadata)
    assert_refused(garbage.value, grpc.StatusCode.INVALID_ARGUMENT, "malformed")

    call = sealed_call(chat, UNARY, target)
    sealed = bytearray(call.seal_request(demo_pb2.EchoRequest(text="x").SerializeToString(),
                                         final=True))
    sealed[-1] ^= 0x01
    with pytest.raises(grpc.RpcError) as tampered:
        raw_unary(target, UNARY, bytes(sealed), call.metadata)
    assert_refused(tampered.value, grpc.StatusCode.UNAUTHENTICATED, "unauthenticated")

    bidi = sealed_call(chat, BIDI, target)
    good = bidi.seal_request(demo_pb2.EchoRequest(text="ok").SerializeToString())
    with pytest.raises(grpc.RpcError) as in_stream:
        raw_bidi(target, BIDI, [good, b"\xff\x00garbage"], bidi.metadata)
    assert_refused(in_stream.value, grpc.StatusCode.INVALID_ARGUMENT, "malformed")


def test_a_replayed_call_header_is_unauthenticated(
        embedded_host: tuple[str, NodePolicy]) -> None:
    target, chat = embedded_host
    call = sealed_call(chat, UNARY, target)
    sealed = call.seal_request(demo_pb2.EchoRequest(text="once").SerializeToString(),
                               final=True)
    raw_unary(target, UNARY, sealed, call.metadata, call)
    with pytest.raises(grpc.RpcError) as replayed:
        raw_unary(target, UNARY, sealed, call.metadata)
    assert_refused(replayed.value, grpc.StatusCode.UNAUTHENTICATED, "unauthenticated")


def test_a_method_the_app_lacks_is_unimplemented_sealed(
        embedded_host: tuple[str, NodePolicy]) -> None:
    """An allowed call to a method the app does not serve ends UNIMPLEMENTED, and that
    status is sealed: the caller checks it as it checks any end."""
    target, chat = embedded_host
    missing = "/demo.v1.Echo/Missing"
    for kind in ("unary", "bidi"):
        call = sealed_call(chat, missing, target)
        with grpc.insecure_channel(target) as opened:
            if kind == "unary":
                rpc = opened.unary_unary(missing).future(
                    call.seal_request(b"", final=True), metadata=call.metadata, timeout=5)
            else:
                first = call.seal_request(b"")
                end = call.end_requests()
                assert end is not None
                rpc = opened.stream_stream(missing)(iter([first, end]),
                                                    metadata=call.metadata, timeout=5)
            with pytest.raises(grpc.RpcError):
                rpc.result() if kind == "unary" else list(rpc)
            assert rpc.code() == grpc.StatusCode.UNIMPLEMENTED, rpc.details()
            assert trailer(rpc, "fastproxy-error") is None  # the app's status, not ours
            call.open_head(tuple(rpc.initial_metadata() or ()))
            call.open_end(rpc.code().value[0], rpc.details() or "",
                          tuple(rpc.trailing_metadata() or ()))


def test_an_out_proxys_tunnel_is_answered_as_a_plain_server_would(
        embedded_host: tuple[str, NodePolicy]) -> None:
    """An out-proxy opens its tunnel to every endpoint it sends calls to; an embedded server
    has none and answers UNIMPLEMENTED as any gRPC server does, not as a refused call (no
    `fastproxy-error`, no audit line): the out-proxy then sends its calls one stream each."""
    target, _ = embedded_host
    with grpc.insecure_channel(target) as opened:
        rpc = opened.stream_stream(CARRY_METHOD)(iter([b""]), timeout=5)
        with pytest.raises(grpc.RpcError):
            list(rpc)
    assert rpc.code() == grpc.StatusCode.UNIMPLEMENTED, rpc.details()
    assert trailer(rpc, "fastproxy-error") is None
