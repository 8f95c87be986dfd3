"""Audit mode (a dry run of the allow rules) and answers that say why, through real proxies
from one policy file that the test rewrites (the proxies reload it):

- a service in `mode: audit`: a call its rules would deny passes, and is counted
  (`fastproxy_would_deny_total` by caller and method), audited (a `would_deny` line) and
  marked on its span; switched to `enforce`, the same call is denied, by the caller's own
  out-proxy when no rule names it;
- a rule in `mode: audit` (a rule being narrowed): its caller's calls outside it pass the same
  way, naming the rule; enforced, the in-proxy denies them;
- every `denied` and `rate_limited` refusal names the deciding rule (`fastproxy-rule`) and the
  policy revision.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from support.dataplane import (
    CALLEE,
    CALLER,
    METERED,
    NARROW,
    STRANGER,
    DataplanePolicy,
    FileStack,
    Proxies,
    ProxyProcess,
    channel,
    free_address,
    poll,
    reason_of,
)
from support.telemetry_stack import OtlpReceiver, free_port, otel_env, scrape
from support.upstream_app import BIDI, UNARY, UpstreamProcess

from fastproxy.policy import PolicyError, load_policy

TAKES_EFFECT_S = 2.0


@dataclass
class AuditStack:
    files: FileStack
    metrics_port: int
    receiver: OtlpReceiver

    @property
    def inproxy(self) -> ProxyProcess:
        return self.files.inproxy

    def out(self, caller: str) -> str:
        return self.files.outproxies[caller].address

    def would_deny_lines(self) -> list[dict[str, object]]:
        lines = []
        for line in self.inproxy.log().splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("event") == "would_deny":
                    lines.append(record)
        return lines

    def would_deny_count(self, caller: str, method: str) -> float:
        for (name, labels), value in scrape(self.metrics_port).items():
            found = dict(labels)
            if (name == "fastproxy_would_deny_total" and found.get("caller") == caller
                    and found.get("method") == method):
                return value
        return 0.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuditStack]:
    directory = tmp_path_factory.mktemp("audit")
    receiver = OtlpReceiver().start()
    with UpstreamProcess(name="song") as upstream:
        proxies = Proxies(directory)
        in_address = free_address()
        policy = DataplanePolicy(song_endpoints=(in_address,), chat_rule=False,
                                 song_mode="audit")
        path = directory / "policy.yaml"
        path.write_text(policy.yaml_text())
        metrics_port = free_port()
        env = {**otel_env(receiver, "audit-in-proxy"), "OTEL_TRACES_SAMPLER": "always_on"}
        try:
            inproxy = proxies.start("in", CALLEE, in_address, policy=path,
                                    upstream=upstream.address, env=env,
                                    extra=("--log-format", "json",
                                           "--metrics-port", str(metrics_port)))
            outs = {name: proxies.start("out", name, free_address(), policy=path)
                    for name in (CALLER, METERED, NARROW, STRANGER)}
            yield AuditStack(FileStack(policy, path, inproxy, outs), metrics_port, receiver)
        finally:
            proxies.stop_all()
            receiver.stop()


def write(stack: AuditStack, **knobs: object) -> None:
    """The stack's policy with `knobs` turned (same keys: only rules and modes change)."""
    base = DataplanePolicy(chat_rule=False)
    changes = {"chat_rule": base.chat_rule, "song_mode": base.song_mode,
               "narrow_mode": base.narrow_mode, **knobs}
    stack.files.write(stack.files.policy.with_(**changes))


def call(address: str, method: str = UNARY, payload: bytes = b"audit") -> grpc.RpcError | None:
    """None when the call succeeded, else its error."""
    with channel(address) as ch:
        try:
            if method == BIDI:
                list(ch.stream_stream(BIDI)(iter([payload]), timeout=5))
            else:
                assert ch.unary_unary(method)(payload, timeout=5) == payload
        except grpc.RpcError as err:
            return err
    return None


def trailer(err: grpc.RpcError, key: str) -> str | None:
    return dict(err.trailing_metadata() or ()).get(key)


def test_a_service_in_audit_mode_lets_a_call_its_rules_deny_pass_counted_audited_and_marked(
        stack: AuditStack) -> None:
    write(stack, song_mode="audit")
    before = len(stack.would_deny_lines())
    assert call(stack.out(CALLER)) is None  # no rule names chat_service: it passes
    poll(lambda: len(stack.would_deny_lines()) > before, 5, "a would_deny audit line")
    line = stack.would_deny_lines()[-1]
    assert {"caller": CALLER, "callee": CALLEE, "method": UNARY, "proxy": "in",
            "audit": f"services.{CALLEE}", "rule": "none"}.items() <= line.items()
    assert "would be denied" in str(line["message"])
    poll(lambda: stack.would_deny_count(CALLER, UNARY) >= 1, 5, "the would_deny metric")
    # the call's span at the in-proxy says so too
    poll(lambda: any(span.attribute("fastproxy.would_deny") == f"services.{CALLEE}"
                     for span in list(stack.receiver.spans)), 10, "a span marked would_deny")
    # an allowed caller is neither counted nor audited
    count = len(stack.would_deny_lines())
    assert call(stack.out(METERED)) is None
    time.sleep(0.3)
    assert len(stack.would_deny_lines()) == count


def test_switched_to_enforce_the_same_call_is_denied_by_the_callers_out_proxy(
        stack: AuditStack) -> None:
    write(stack, song_mode="audit")
    poll(lambda: call(stack.out(CALLER)) is None, 5, "audit mode in force")
    started = time.monotonic()
    write(stack, song_mode="enforce")

    def denied_by_its_out_proxy() -> bool:
        # (the in-proxy, reloading first, may deny it meanwhile: denied all the same)
        err = call(stack.out(CALLER))
        return err is not None and trailer(err, "fastproxy-proxy") == "out"
    poll(denied_by_its_out_proxy, 5, "enforcement at the out-proxy")
    assert time.monotonic() - started <= TAKES_EFFECT_S + 0.5  # the file poll is 0.2 s
    err = call(stack.out(CALLER))
    assert err is not None and err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(err) == "denied"
    assert trailer(err, "fastproxy-rule") == "none"


def test_a_rule_in_audit_mode_lets_its_callers_other_calls_pass_until_enforced(
        stack: AuditStack) -> None:
    write(stack, narrow_mode="audit")
    before = len(stack.would_deny_lines())
    rule = f"services.{CALLEE}.allow[1]"  # narrow_service's

    def passed_naming_the_rule() -> bool:
        # (until the in-proxy reloads, an earlier mode may decide: wait for this one)
        return call(stack.out(NARROW), BIDI) is None and any(
            line["caller"] == NARROW and line["method"] == BIDI and line["audit"] == rule
            for line in stack.would_deny_lines()[before:])
    poll(passed_naming_the_rule, 5, "the narrowed rule in audit, its would_deny line")
    # A caller no audit rule names is still denied (the service itself enforces), by its own
    # out-proxy once it reloaded. (Before, its old route may reach the in-proxy, which no
    # longer knows its identity: unauthenticated, as for any hello it cannot check.)

    def stranger_denied() -> bool:
        err = call(stack.out(STRANGER))
        return err is not None and reason_of(err) == "denied"
    poll(stranger_denied, 5, "stranger_service denied")
    write(stack, narrow_mode="enforce")
    poll(lambda: call(stack.out(NARROW), BIDI) is not None, 5, "enforcement")
    err = call(stack.out(NARROW), BIDI)
    assert err is not None and err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert trailer(err, "fastproxy-proxy") == "in"
    assert trailer(err, "fastproxy-rule") == "none"
    details = err.details() or ""
    assert f"services.{CALLEE}.allow[1]" in details and "policy revision" in details
    assert call(stack.out(NARROW), UNARY) is None  # what the rule allows still passes


def test_a_rate_limited_call_names_its_rule_and_revision(stack: AuditStack) -> None:
    write(stack)
    refused: list[grpc.RpcError] = []
    deadline = time.monotonic() + 5
    while not refused and time.monotonic() < deadline:
        with channel(stack.out(METERED)) as ch:
            method = ch.unary_unary(UNARY)
            calls = [method.future(b"x", timeout=5) for _ in range(30)]
            refused = [c.exception() for c in calls if c.exception() is not None]
    assert refused, "the rate limit never refused"
    err = refused[0]
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert trailer(err, "fastproxy-rule") == f"services.{CALLEE}.allow[0]"
    assert "policy revision" in (err.details() or "")


def test_an_unknown_mode_is_refused_naming_the_field() -> None:
    with pytest.raises(PolicyError) as refused:
        load_policy(DataplanePolicy(song_mode="dry", narrow_mode="shadow").yaml_text())
    assert f"services.{CALLEE}.mode: must be one of enforce, audit" in refused.value.errors
    assert (f"services.{CALLEE}.allow[2].mode: must be one of enforce, audit"
            in refused.value.errors), refused.value.errors
