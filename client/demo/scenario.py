"""The demo's calls: every RPC kind through the sidecar path and the embedded path, an app
error that passes through untouched, a denied call and a rate-limited one, a call let
through by audit mode, and the Center's explanation of a denial."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc

from fastproxy.pipeline.reasons import ERROR_TRAILER
from fastproxy.v1 import demo_pb2, demo_pb2_grpc


@dataclass(frozen=True, slots=True)
class Outcome:
    path: str
    what: str
    code: grpc.StatusCode
    reason: str  # fastproxy-error trailer, "" for the app's own status
    millis: float
    summary: str
    expected: bool


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=dict)

    @property
    def all_expected(self) -> bool:
        return all(o.expected for o in self.outcomes)

    def refused(self) -> Counter[str]:
        return Counter(o.reason for o in self.outcomes if o.reason)


def _reason(error: grpc.RpcError) -> str:
    trailers = error.trailing_metadata() if isinstance(error, grpc.Call) else None
    for key, value in trailers or ():
        if key == ERROR_TRAILER:
            return str(value)
    return ""


def _messages(texts: list[str]) -> Iterator[demo_pb2.EchoRequest]:
    for text in texts:
        yield demo_pb2.EchoRequest(text=text)


def run_call(report: Report, path: str, what: str, call: Callable[[], str],
             expect: grpc.StatusCode = grpc.StatusCode.OK, expect_reason: str = "") -> Outcome:
    started = time.perf_counter()
    try:
        summary = call()
        code, reason = grpc.StatusCode.OK, ""
    except grpc.RpcError as error:
        code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
        reason = _reason(error)
        details = error.details() if isinstance(error, grpc.Call) else str(error)
        summary = f"{details}" + (f" [fastproxy-error: {reason}]" if reason else "")
    millis = (time.perf_counter() - started) * 1000
    outcome = Outcome(path, what, code, reason, millis, summary,
                      code == expect and reason == expect_reason)
    report.outcomes.append(outcome)
    return outcome


def every_kind(report: Report, path: str, channel: grpc.Channel,
               show: Callable[[Outcome], None]) -> None:
    echo = demo_pb2_grpc.EchoStub(channel)
    big = b"x" * 4096  # above min_bytes: compressed, then encrypted
    show(run_call(report, path, "Echo.Unary", lambda: echo.Unary(
        demo_pb2.EchoRequest(text="hello", payload=big), timeout=5).text
        + f" (+{len(big)} B payload)"))
    show(run_call(report, path, "Echo.ClientStream", lambda: echo.ClientStream(
        _messages(["one", "two", "three"]), timeout=5).text))
    show(run_call(report, path, "Echo.ServerStream", lambda: " | ".join(
        f"{r.index}:{r.text}" for r in echo.ServerStream(
            demo_pb2.EchoRequest(text="tick", repeat=3), timeout=5))))
    show(run_call(report, path, "Echo.Bidi", lambda: " | ".join(
        r.text for r in echo.Bidi(_messages(["ping", "pong"]), timeout=5))))


def catalog_calls(report: Report, path: str, channel: grpc.Channel,
                  show: Callable[[Outcome], None]) -> None:
    catalog = demo_pb2_grpc.CatalogStub(channel)
    show(run_call(report, path, "Catalog.GetItem", lambda: catalog.GetItem(
        demo_pb2.GetItemRequest(id="book-003"), timeout=5).name))
    show(run_call(report, path, "Catalog.ListItems", lambda: ", ".join(
        i.id for i in catalog.ListItems(demo_pb2.ListItemsRequest(category="tools"),
                                        timeout=5))))
    show(run_call(report, path, "Catalog.GetItem (unknown id)", lambda: catalog.GetItem(
        demo_pb2.GetItemRequest(id="nope"), timeout=5).name,
        expect=grpc.StatusCode.NOT_FOUND))
    show(run_call(report, path, "Catalog.PutItem (no rule)", lambda: str(catalog.PutItem(
        demo_pb2.PutItemRequest(item=demo_pb2.Item(id="x-1", name="X", category="misc")),
        timeout=5).created), expect=grpc.StatusCode.PERMISSION_DENIED, expect_reason="denied"))
    count = demo_pb2.CountRequest(category="books")
    show(run_call(report, path, "Catalog.Count", lambda: str(
        catalog.Count(count, timeout=5).count)))
    show(run_call(report, path, "Catalog.Count (again, same second)", lambda: str(
        catalog.Count(count, timeout=5).count), expect=grpc.StatusCode.RESOURCE_EXHAUSTED,
        expect_reason="rate_limited"))


def audited_call(report: Report, channel: grpc.Channel) -> Outcome:
    """reports_service may only count, but its rule is in audit mode: this passes, and the
    in-proxy logs it as a call that would be denied (`event=would_deny`)."""
    catalog = demo_pb2_grpc.CatalogStub(channel)
    return run_call(report, "embedded", "Catalog.ListItems (reports, audit)",
                    lambda: ", ".join(i.id for i in catalog.ListItems(
                        demo_pb2.ListItemsRequest(category="tools"), timeout=5))
                    + "  (passes; enforced, it would be denied)")


def explain(center: str, caller: str, method: str) -> str:
    """What `fastproxy explain` prints for the call."""
    from fastproxy.cli.explain import explanation_text
    from fastproxy.v1 import center_pb2, center_pb2_grpc

    with grpc.insecure_channel(center) as channel:
        answer = center_pb2_grpc.CenterStub(channel).Explain(
            center_pb2.ExplainRequest(caller=caller, method=method), timeout=5)
    return explanation_text(answer)


def measure(report: Report, path: str, channel: grpc.Channel, calls: int) -> None:
    """Sequential unary calls (one in flight): the latency the path adds, end to end."""
    echo = demo_pb2_grpc.EchoStub(channel)
    request = demo_pb2.EchoRequest(text="latency", payload=b"y" * 1024)
    samples = report.latencies.setdefault(path, [])
    for _ in range(calls):
        started = time.perf_counter()
        echo.Unary(request, timeout=5)
        samples.append((time.perf_counter() - started) * 1000)


def percentile(samples: list[float], fraction: float) -> float:
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[round(fraction * 100) - 1]
