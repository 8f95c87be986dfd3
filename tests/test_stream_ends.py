"""How each direction of a call ends, sealed (docs/protocol.md, section 4): the request
stream ends with a DATA flagged FINAL or an END record, and a half-close before either is
"cut short"; the response's headers travel with a HEAD record and its status, message count
and trailers with a STATUS record, and the caller refuses anything that differs."""

from __future__ import annotations

import pytest
from support.core_policies import METHOD, T0, Setup, connect, refused

from fastproxy.pipeline.metadata import END_KEY, HEAD_KEY, Metadata
from fastproxy.pipeline.node_policy import NodeState
from fastproxy.pipeline.reasons import Reason
from fastproxy.pipeline.records import Direction
from fastproxy.pipeline.stages import InboundCall, OutboundCall

MIB = 1 << 20
CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND = 1, 2, 3, 4, 5
PERMISSION_DENIED, RESOURCE_EXHAUSTED, INTERNAL, UNAVAILABLE, UNAUTHENTICATED = 7, 8, 13, 14, 16


def call() -> tuple[OutboundCall, InboundCall]:
    return connect(*Setup().pair(), NodeState())


def without(metadata: Metadata, key: str) -> Metadata:
    return tuple(entry for entry in metadata if entry[0] != key)


# --- the request stream ------------------------------------------------------------------------


def test_a_request_flagged_final_ends_the_request_stream() -> None:
    outbound, inbound = call()
    assert inbound.open_request(outbound.seal_request(b"only", final=True)) == b"only"
    assert outbound.end_requests() is None
    inbound.finish_requests()


@pytest.mark.parametrize("count", [0, 1, 3])
def test_an_end_record_after_the_last_request_ends_the_request_stream(count: int) -> None:
    outbound, inbound = call()
    for i in range(count):
        assert inbound.open_request(outbound.seal_request(bytes([i]))) == bytes([i])
    end = outbound.end_requests()
    assert end is not None
    assert inbound.open_request(end) is None
    inbound.finish_requests()


def test_a_half_close_before_the_sealed_end_is_refused_as_cut_short() -> None:
    outbound, inbound = call()
    inbound.open_request(outbound.seal_request(b"first of many"))
    error = refused(Reason.UNAUTHENTICATED, inbound.finish_requests)
    assert "cut short" in error.detail


def test_a_callee_that_knows_the_method_takes_one_request_needs_no_final_flag() -> None:
    outbound, inbound = call()
    assert inbound.open_request(outbound.seal_request(b"unary"), single=True) == b"unary"
    inbound.finish_requests()


def test_an_end_record_that_skips_a_dropped_request_is_refused() -> None:
    outbound, inbound = call()
    first = outbound.seal_request(b"one")
    outbound.seal_request(b"two, dropped on the way")
    end = outbound.end_requests()
    assert end is not None
    inbound.open_request(first)
    refused(Reason.UNAUTHENTICATED, lambda: inbound.open_request(end))


def test_a_request_after_the_final_one_is_refused() -> None:
    outbound, inbound = call()
    final = outbound.seal_request(b"last", final=True)
    inbound.open_request(final)
    error = refused(Reason.UNAUTHENTICATED, lambda: inbound.open_request(final))
    assert "after the end" in error.detail


def test_a_request_after_the_end_record_is_refused() -> None:
    outbound, inbound = call()
    end = outbound.end_requests()
    assert end is not None
    inbound.open_request(end)
    refused(Reason.UNAUTHENTICATED, lambda: inbound.open_request(end))


def test_nothing_is_sealed_after_the_final_request() -> None:
    outbound, _ = call()
    outbound.seal_request(b"last", final=True)
    refused(Reason.UNAUTHENTICATED, lambda: outbound.seal_request(b"one more"))


def test_an_end_record_among_responses_is_refused() -> None:
    outbound, inbound = call()
    end = Direction(inbound.session.response, inbound.call_number, clear=False,
                    max_bytes=MIB).seal_end()
    assert end is not None
    error = refused(Reason.UNAUTHENTICATED, lambda: outbound.open_response(end))
    assert "END record among responses" in error.detail


# --- the response's headers --------------------------------------------------------------------


def test_response_headers_set_by_the_app_travel_with_a_head_record_and_open_unchanged() -> None:
    outbound, inbound = call()
    headers = (("x-h", "v"), ("x-h", "w"), ("x-data-bin", b"\x00\x01"))
    sent = inbound.seal_head(headers)
    assert HEAD_KEY in dict(sent)
    assert outbound.open_head(sent) == headers


def test_response_headers_without_app_entries_need_no_head_record() -> None:
    outbound, inbound = call()
    sent = inbound.seal_head((("content-type", "application/grpc"),))
    assert HEAD_KEY not in dict(sent)
    assert outbound.open_head(sent) == (("content-type", "application/grpc"),)


def test_response_headers_with_app_entries_and_no_head_record_are_refused() -> None:
    outbound, inbound = call()
    sent = inbound.seal_head((("x-h", "v"),))
    error = refused(Reason.UNAUTHENTICATED, lambda: outbound.open_head(without(sent, HEAD_KEY)))
    assert "not sealed" in error.detail


def test_response_headers_changed_on_the_way_are_refused() -> None:
    outbound, inbound = call()
    sent = inbound.seal_head((("x-h", "v"),))
    changed = tuple(("x-h", "forged") if key == "x-h" else (key, value) for key, value in sent)
    refused(Reason.UNAUTHENTICATED, lambda: outbound.open_head(changed))


def test_hop_by_hop_response_headers_may_change_on_the_way() -> None:
    outbound, inbound = call()
    sent = inbound.seal_head((("x-h", "v"),))
    relayed = (("via", "1.1 gateway"), ("content-type", "application/grpc"), *sent)
    assert outbound.open_head(relayed) == (("via", "1.1 gateway"),
                                           ("content-type", "application/grpc"), ("x-h", "v"))


def test_a_head_record_moved_to_another_call_is_refused() -> None:
    caller, callee = Setup().pair()
    state = NodeState()
    first_out, first_in = connect(caller, callee, state)
    second_out, _ = connect(caller, callee, state, session=first_out.session)
    sent = first_in.seal_head((("x-h", "v"),))
    refused(Reason.UNAUTHENTICATED, lambda: second_out.open_head(sent))


def test_response_headers_dropped_whole_are_noticed_at_the_end() -> None:
    outbound, inbound = call()
    inbound.seal_head((("x-h", "v"),))  # dropped on the way, HEAD record and all
    assert outbound.open_head(()) == ()
    trailers = inbound.seal_end(0, "", ())
    refused(Reason.UNAUTHENTICATED, lambda: outbound.open_end(0, "", trailers))


# --- the response's end ------------------------------------------------------------------------


def test_a_sealed_status_opens_with_its_trailers() -> None:
    outbound, inbound = call()
    outbound.open_response(inbound.seal_response(b"answer"))
    trailers = inbound.seal_end(NOT_FOUND, "no such song", (("x-t", "t"), ("x-t-bin", b"\xff")))
    assert END_KEY in dict(trailers)
    assert outbound.open_end(NOT_FOUND, "no such song", trailers) == (("x-t", "t"),
                                                                      ("x-t-bin", b"\xff"))


def test_a_changed_status_code_is_refused() -> None:
    outbound, inbound = call()
    trailers = inbound.seal_end(NOT_FOUND, "no such song", ())
    refused(Reason.UNAUTHENTICATED, lambda: outbound.open_end(0, "no such song", trailers))


def test_a_changed_status_message_is_refused() -> None:
    outbound, inbound = call()
    trailers = inbound.seal_end(NOT_FOUND, "no such song", ())
    refused(Reason.UNAUTHENTICATED, lambda: outbound.open_end(NOT_FOUND, "try later", trailers))


def test_changed_trailers_are_refused() -> None:
    outbound, inbound = call()
    trailers = inbound.seal_end(0, "", (("x-t", "t"),))
    changed = (*trailers, ("x-added", "1"))
    error = refused(Reason.UNAUTHENTICATED, lambda: outbound.open_end(0, "", changed))
    assert "trailers changed" in error.detail


def test_a_response_missing_its_last_message_is_refused() -> None:
    outbound, inbound = call()
    outbound.open_response(inbound.seal_response(b"one"))
    inbound.seal_response(b"two, dropped on the way")
    trailers = inbound.seal_end(0, "", ())
    refused(Reason.UNAUTHENTICATED, lambda: outbound.open_end(0, "", trailers))


def test_a_status_record_given_twice_is_refused() -> None:
    outbound, inbound = call()
    trailers = inbound.seal_end(0, "", ())
    twice = (*trailers, *(entry for entry in trailers if entry[0] == END_KEY))
    error = refused(Reason.UNAUTHENTICATED, lambda: outbound.open_end(0, "", twice))
    assert "more than once" in error.detail


def test_a_status_record_moved_to_another_call_is_refused() -> None:
    caller, callee = Setup().pair()
    state = NodeState()
    first_out, first_in = connect(caller, callee, state)
    second_out, _ = connect(caller, callee, state, session=first_out.session)
    trailers = first_in.seal_end(0, "", ())
    refused(Reason.UNAUTHENTICATED, lambda: second_out.open_end(0, "", trailers))


def test_an_ok_response_without_a_status_record_is_refused_as_cut_short() -> None:
    outbound, inbound = call()
    outbound.open_response(inbound.seal_response(b"half an answer"))
    error = refused(Reason.UNAUTHENTICATED, lambda: outbound.open_end(0, "", ()))
    assert "cut short" in error.detail


@pytest.mark.parametrize("code", [CANCELLED, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE,
                                  UNAUTHENTICATED])
def test_a_broken_connection_status_may_arrive_unsealed(code: int) -> None:
    outbound, _ = call()
    assert outbound.open_end(code, "connection reset", (("x-t", "t"),)) == (("x-t", "t"),)


@pytest.mark.parametrize("code", [UNKNOWN, INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED,
                                  RESOURCE_EXHAUSTED])
def test_any_other_status_arriving_unsealed_is_refused(code: int) -> None:
    outbound, _ = call()
    error = refused(Reason.UNAUTHENTICATED, lambda: outbound.open_end(code, "made up", ()))
    assert "not sealed" in error.detail


def test_a_call_opened_on_both_sides_runs_to_its_sealed_end() -> None:
    caller, callee = Setup().pair()
    outbound, inbound = connect(caller, callee, NodeState(), METHOD, T0,
                                metadata=(("x-a", "1"),))
    assert inbound.open_request(outbound.seal_request(b"ping", final=True)) == b"ping"
    inbound.finish_requests()
    assert outbound.open_head(inbound.seal_head((("x-h", "v"),))) == (("x-h", "v"),)
    assert outbound.open_response(inbound.seal_response(b"pong")) == b"pong"
    assert outbound.open_end(0, "", inbound.seal_end(0, "", (("x-t", "t"),))) == (("x-t", "t"),)
