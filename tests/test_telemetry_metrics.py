"""Metrics on the proxies' Prometheus endpoints (scraped over HTTP, parsed with
prometheus_client's parser) and over OTLP, and the audit line of each refused call."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from support.metric_docs import DOCS, documented_metrics, undocumented
from support.telemetry_stack import CALLEE, CALLER, TelemetryStack, sample, scrape, telemetry_stack

from fastproxy.v1 import demo_pb2, demo_pb2_grpc

pytestmark = pytest.mark.timeout(90)

UNARY = "/demo.v1.Echo/Unary"
DENIED_METHOD = "/demo.v1.Catalog/GetItem"
LIMITED_METHOD = "/demo.v1.Catalog/Count"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TelemetryStack]:
    with telemetry_stack(tmp_path_factory.mktemp("telemetry-metrics")) as running:
        yield running


@pytest.fixture(scope="module")
def channel(stack: TelemetryStack) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(stack.outproxy.address) as opened:
        yield opened


def _eventually(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(what)
        time.sleep(0.1)


def _code(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return,attr-defined]
    return grpc.StatusCode.OK


def _rate_limited(channel: grpc.Channel) -> None:
    """Count twice: the rule's only token goes to the first call (or an earlier test's)."""
    catalog = demo_pb2_grpc.CatalogStub(channel)
    codes = [_code(lambda: catalog.Count(demo_pb2.CountRequest(), timeout=10))
             for _ in range(2)]
    assert codes[-1] == grpc.StatusCode.RESOURCE_EXHAUSTED, codes


def _denied(channel: grpc.Channel) -> None:
    catalog = demo_pb2_grpc.CatalogStub(channel)
    assert _code(lambda: catalog.GetItem(demo_pb2.GetItemRequest(id="a"), timeout=10)) \
        == grpc.StatusCode.PERMISSION_DENIED


def test_calls_count_by_caller_callee_method_and_code_on_both_proxies(
        stack: TelemetryStack, channel: grpc.Channel) -> None:
    before_in = scrape(stack.in_metrics_port)
    before_out = scrape(stack.out_metrics_port)
    echo = demo_pb2_grpc.EchoStub(channel)
    for _ in range(3):
        echo.Unary(demo_pb2.EchoRequest(payload=b"x" * 1000), timeout=10)
    after_in = scrape(stack.in_metrics_port)
    after_out = scrape(stack.out_metrics_port)
    labels = {"caller": CALLER, "callee": CALLEE, "method": UNARY, "code": "OK"}
    for before, after in ((before_in, after_in), (before_out, after_out)):
        assert (sample(after, "fastproxy_calls_total", **labels)
                - sample(before, "fastproxy_calls_total", **labels)) == 3
        assert (sample(after, "fastproxy_call_duration_seconds_count", **labels)
                - sample(before, "fastproxy_call_duration_seconds_count", **labels)) == 3
        assert (sample(after, "fastproxy_received_bytes_total")
                - sample(before, "fastproxy_received_bytes_total")) >= 3 * 2 * 1000
        assert sample(after, "fastproxy_active_streams") == 0
        assert sample(after, "fastproxy_policy_revision") == 1
    # The out-proxy seals requests, the in-proxy opens them: both spend time at it.
    assert sample(after_out, "fastproxy_seal_seconds_total") > sample(
        before_out, "fastproxy_seal_seconds_total")
    assert sample(after_in, "fastproxy_open_seconds_total") > sample(
        before_in, "fastproxy_open_seconds_total")


def test_refusals_count_by_reason_on_the_in_proxy(stack: TelemetryStack,
                                                  channel: grpc.Channel) -> None:
    before = scrape(stack.in_metrics_port)
    _denied(channel)
    _rate_limited(channel)
    after = scrape(stack.in_metrics_port)

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert moved("fastproxy_refusals_total", reason="denied") == 1
    assert moved("fastproxy_refusals_total", reason="rate_limited") >= 1
    # The in-proxy's own refusals name its service as the callee.
    assert moved("fastproxy_calls_total", caller=CALLER, callee=CALLEE, method=DENIED_METHOD,
                 code="PERMISSION_DENIED") == 1
    assert moved("fastproxy_calls_total", caller=CALLER, callee=CALLEE, method=LIMITED_METHOD,
                 code="RESOURCE_EXHAUSTED") >= 1


def test_every_proxy_names_its_own_service_in_the_calls_it_refuses(
        stack: TelemetryStack, channel: grpc.Channel) -> None:
    """A call the in-proxy refuses before it knows the caller (not sealed) still counts
    under its callee, and one the out-proxy refuses (no route) under its caller."""
    before_in = scrape(stack.in_metrics_port)
    before_out = scrape(stack.out_metrics_port)
    with grpc.insecure_channel(stack.inproxy.address) as plain:
        assert _code(lambda: plain.unary_unary(UNARY)(b"", timeout=10)) \
            == grpc.StatusCode.UNAUTHENTICATED
    assert _code(lambda: channel.unary_unary("/nowhere.v1.X/Y")(b"", timeout=10)) \
        == grpc.StatusCode.UNIMPLEMENTED
    after_in = scrape(stack.in_metrics_port)
    after_out = scrape(stack.out_metrics_port)
    assert sample(after_in, "fastproxy_calls_total", caller="", callee=CALLEE, method=UNARY,
                  code="UNAUTHENTICATED") - sample(
        before_in, "fastproxy_calls_total", caller="", callee=CALLEE, method=UNARY,
        code="UNAUTHENTICATED") == 1
    assert sample(after_out, "fastproxy_calls_total", caller=CALLER, callee="",
                  method="/nowhere.v1.X/Y", code="UNIMPLEMENTED") - sample(
        before_out, "fastproxy_calls_total", caller=CALLER, callee="", method="/nowhere.v1.X/Y",
        code="UNIMPLEMENTED") == 1


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_the_metrics_the_proxies_serve_are_the_ones_the_docs_list(
        stack: TelemetryStack, channel: grpc.Channel, doc: Path) -> None:
    demo_pb2_grpc.EchoStub(channel).Unary(demo_pb2.EchoRequest(text="x"), timeout=10)
    _denied(channel)
    documented = documented_metrics(doc)
    for port in (stack.in_metrics_port, stack.out_metrics_port):
        assert undocumented(scrape(port), documented) == []


def test_the_proxies_export_their_metrics_over_otlp_too(stack: TelemetryStack,
                                                        channel: grpc.Channel) -> None:
    demo_pb2_grpc.EchoStub(channel).Unary(demo_pb2.EchoRequest(text="x"), timeout=10)
    wanted = {"fastproxy.calls", "fastproxy.call.duration", "fastproxy.policy.revision"}
    for service in ("test-in-proxy", "test-out-proxy"):
        _eventually(lambda service=service: wanted <= stack.receiver.metric_names.get(
            service, set()), f"{service} exported {wanted} over OTLP")


def _audit_lines(stack: TelemetryStack) -> list[dict[str, object]]:
    lines = []
    for line in stack.inproxy.log().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("logger") == "fastproxy.audit":
                lines.append(record)
    return lines


@pytest.mark.parametrize(("refuse", "method", "reason"), [
    (_denied, DENIED_METHOD, "denied"),
    (_rate_limited, LIMITED_METHOD, "rate_limited"),
])
def test_a_refused_call_is_one_json_audit_line_in_the_in_proxy_log(
        stack: TelemetryStack, channel: grpc.Channel,
        refuse: Callable[[grpc.Channel], None], method: str, reason: str) -> None:
    seen = len([line for line in _audit_lines(stack) if line["reason"] == reason])
    refuse(channel)

    def found() -> list[dict[str, object]]:
        return [line for line in _audit_lines(stack) if line["reason"] == reason][seen:]

    _eventually(lambda: bool(found()), f"an audit line for {reason}")
    line = found()[-1]
    # the message names the call (an app's plain logging shows it), the fields stay apart
    assert line["message"] == (f"call refused: {CALLER} -> {CALLEE} {method}: {reason} "
                               f"(proxy in, revision 1, rule {line['rule']})")
    assert line["rule"] == ("none" if reason == "denied"
                            else "services.song_service.allow[1]")
    assert line["level"] == "warning"
    assert line["caller"] == CALLER
    assert line["callee"] == CALLEE
    assert line["method"] == method
    assert line["revision"] == 1
    assert str(line["peer"]).startswith("ipv4:127.0.0.1:")
    assert line["proxy"] == "in"
    # The in-proxy traces: the line names the call's trace.
    assert len(str(line["trace_id"])) == 32
