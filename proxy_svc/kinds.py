"""Which methods are unary: learned, never guessed, so the proxy can serve them on its fast path.

Why: grpc.aio chooses the handler type when a call arrives, from the method name alone. A
method served as stream-stream (the only safe choice for an unknown method) costs a generator
on each side, a separate write and half-close towards the upstream and a separate read; a
unary handler and a `unary_unary` upstream call send message and half-close in one batch. The
kind must be known before the first message, and serving a streaming method as unary would
silently drop its extra messages, so a kind comes only from a source that knows it:

- the in-proxy's `--descriptor-set FILE` (a `FileDescriptorSet`, as `protoc
  --descriptor_set_out` writes it) declares its upstream's methods from the start: the way to
  the fast path and the tunnel for an upstream without reflection. Reflection, where the
  upstream serves it, still has the last word.
- the in-proxy asks its upstream's server reflection (`grpc.reflection.v1alpha`, then `v1`),
  once per gRPC service, in the background, after a call to that service was admitted (so an
  unauthenticated client cannot make it ask about anything). Until the answer is in, and for
  an upstream without reflection, calls take the stream path.
- the in-proxy tells the out-proxy inside the call's sealed end (the STATUS record's
  `unary`), only on calls that asked (the out-proxy sends `KIND_KEY: ASK_KIND`); the
  out-proxy learns a method from it once the end opened, and forgets it when a fast-path
  answer comes back without it. (It was a response trailer of ours until a review showed a
  relay could add it to a streaming method's answer: the out-proxy then served that method
  as unary, and gRPC's unary handler drops every request after the first.)
- a fast-path call that fails in a way that can mean the kind was wrong (DEADLINE_EXCEEDED,
  INTERNAL, UNIMPLEMENTED) drops the method; later calls take the stream path, and the
  in-proxy asks its upstream again after `ASK_AGAIN_AFTER_S`. Except a deadline in the
  in-proxy: its kinds come from reflection, and a deadline there is almost always a slow app,
  so the method stays and the upstream is asked again at once (`verify`, at most once per
  `ASK_AGAIN_AFTER_S` per service); the answer corrects the kind if it did change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import grpc

from fastproxy.pipeline.metadata import KIND_KEY, Metadata, grpc_service_of
from proxy_svc.upstream import StatusLog

_log = logging.getLogger("fastproxy.proxy")

ASK_KIND = "?"  # request entry of the out-proxy: tell me this method's kind
# The reflection services, newest-but-rare last: grpcio-reflection serves v1alpha.
REFLECTION_METHODS = (
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
)
REFLECTION_TIMEOUT_S = 3.0
# Services asked about, at most (each answer is kept for the process's life).
MAX_SERVICES = 1024
# After a method left the fast path, its service is asked again no sooner than this: an app
# that keeps failing a unary method must not turn each failure into a reflection call.
ASK_AGAIN_AFTER_S = 30.0


class MethodKinds:
    """The methods known to be unary (`unary`, read on every call) and to stream."""

    def __init__(self, unary: Iterable[str] = ()) -> None:
        self.unary: set[str] = set(unary)
        self.streaming: set[str] = set()
        self.learned = 0
        self.forgotten = 0

    def learn(self, method: str, is_unary: bool, source: str) -> None:
        if is_unary:
            if method not in self.unary:
                self.unary.add(method)
                self.learned += 1
                _log.info("method %s is unary (from %s): fast path", method, source)
        else:
            self.unary.discard(method)
            if method not in self.streaming:
                self.streaming.add(method)
                _log.info("method %s streams (from %s)", method, source)

    def forget(self, method: str, why: str) -> None:
        if method in self.unary:
            self.unary.discard(method)
            self.forgotten += 1
            _log.info("method %s left the fast path: %s", method, why)


class ReflectionLearner:
    """Asks the upstream's server reflection about each gRPC service once, in the background."""

    def __init__(self, kinds: MethodKinds, channel: Callable[[], grpc.aio.Channel],
                 timeout_s: float = REFLECTION_TIMEOUT_S) -> None:
        self._kinds = kinds
        self._channel = channel
        self._timeout_s = timeout_s
        self._asked: set[str] = set()
        self._ask_again_at: dict[str, float] = {}
        self._verified_at: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def consider(self, method: str) -> None:
        """Called for an admitted call on the stream path; starts at most one lookup per
        gRPC service."""
        if method in self._kinds.streaming:
            return
        service = grpc_service_of(method)
        if not service:
            return
        if service in self._asked:
            again_at = self._ask_again_at.get(service)
            if again_at is None or time.monotonic() < again_at:
                return
            del self._ask_again_at[service]
        elif len(self._asked) >= MAX_SERVICES:
            return
        self._asked.add(service)
        self._start_asking(service)

    def verify(self, method: str, now: float | None = None) -> None:
        """A fast-path call of `method` ran out of time: asks the upstream about its service
        again now (at most once per `ASK_AGAIN_AFTER_S`); the kind stays until the answer."""
        service = grpc_service_of(method)
        now = time.monotonic() if now is None else now
        last = self._verified_at.get(service)
        if not service or (last is not None and now - last < ASK_AGAIN_AFTER_S):
            return
        self._verified_at[service] = now
        self._start_asking(service)

    def _start_asking(self, service: str) -> None:
        task = asyncio.get_running_loop().create_task(self._ask(service))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def ask_again(self, method: str, after_s: float = ASK_AGAIN_AFTER_S) -> None:
        """After `method` left the fast path: a call to its service `after_s` from now or
        later asks again."""
        service = grpc_service_of(method)
        if service in self._asked and service not in self._ask_again_at:
            self._ask_again_at[service] = time.monotonic() + after_s

    async def _ask(self, service: str) -> None:
        try:
            kinds = await self.lookup(service)
        except Exception as exc:  # any failure keeps the stream path
            _log.debug("reflection lookup of %s failed: %s", service, exc)
            return
        for method, is_unary in kinds.items():
            self._kinds.learn(method, is_unary, "upstream reflection")

    async def lookup(self, service: str) -> dict[str, bool]:
        """Method path -> is unary, for every method of `service` the upstream describes;
        {} when it has no reflection or does not know the service."""
        from google.protobuf import descriptor_pb2
        from grpc_reflection.v1alpha import reflection_pb2 as rpb

        request = rpb.ServerReflectionRequest(file_containing_symbol=service)
        for path in REFLECTION_METHODS:
            stub = self._channel().stream_stream(
                path, request_serializer=rpb.ServerReflectionRequest.SerializeToString,
                response_deserializer=rpb.ServerReflectionResponse.FromString)
            call = stub(iter((request,)), timeout=self._timeout_s)
            statuses = StatusLog(call)  # an upstream without reflection may answer under our
            try:                        # write: keep its UNIMPLEMENTED (grpc/grpc#36066)
                response = await call.read()
                call.cancel()
            except grpc.aio.AioRpcError as err:
                if (await statuses.settled(err)).code() == grpc.StatusCode.UNIMPLEMENTED:
                    continue
                raise
            if response is grpc.aio.EOF or not response.HasField("file_descriptor_response"):
                return {}
            return _methods_of(service, response.file_descriptor_response.file_descriptor_proto,
                               descriptor_pb2.FileDescriptorProto.FromString)
        return {}

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()


def kinds_of_descriptor_set(data: bytes) -> dict[str, bool]:
    """Method path -> is unary, for every method of every service a serialized
    `google.protobuf.FileDescriptorSet` declares (what `protoc --descriptor_set_out` writes);
    ValueError naming what is wrong when it is not one or declares no service."""
    from google.protobuf import descriptor_pb2
    from google.protobuf.message import DecodeError

    try:
        files = descriptor_pb2.FileDescriptorSet.FromString(data).file
    except DecodeError as exc:
        raise ValueError(f"not a serialized FileDescriptorSet ({exc})") from None
    kinds: dict[str, bool] = {}
    for file in files:
        prefix = f"{file.package}." if file.package else ""
        for declared in file.service:
            for method in declared.method:
                kinds[f"/{prefix}{declared.name}/{method.name}"] = not (
                    method.client_streaming or method.server_streaming)
    if not kinds:
        raise ValueError("it declares no service with a method (a FileDescriptorSet as "
                         "protoc --descriptor_set_out writes it is expected)")
    return kinds


def _methods_of(service: str, files: Iterable[bytes],
                parse: Callable[[bytes], Any]) -> dict[str, bool]:
    for raw in files:
        file = parse(raw)
        prefix = f"{file.package}." if file.package else ""
        for declared in file.service:
            if prefix + declared.name != service:
                continue
            return {f"/{service}/{method.name}":
                    not (method.client_streaming or method.server_streaming)
                    for method in declared.method}
    return {}


# How a unary call to a method that streams ends (grpc.aio 1.85): a streaming upstream's second
# message leaves the call waiting for its deadline; an upstream that no longer has the method
# or refuses the framing answers UNIMPLEMENTED or INTERNAL. Any of them drops the kind.
MAYBE_WRONG_KIND = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL,
                              grpc.StatusCode.UNIMPLEMENTED})


def _without_kind(trailers: Metadata) -> Metadata:
    if trailers and any(key == KIND_KEY for key, _ in trailers):
        return tuple(entry for entry in trailers if entry[0] != KIND_KEY)
    return trailers


class KindExchange:
    """What the forwarding handler does about kinds, per call; this base does nothing but
    keep `kinds` (a proxy that neither tells nor learns). `KindTeller` is the in-proxy's,
    `KindListener` the out-proxy's."""

    request_entries: Metadata = ()  # what each upstream call adds to its metadata

    def __init__(self, kinds: MethodKinds | None = None) -> None:
        self.kinds = kinds if kinds is not None else MethodKinds()

    def asked(self, metadata: Metadata) -> bool:
        """Whether the caller asked to be told the kind (answered in `settle`)."""
        return False

    def consider(self, method: str) -> None:
        """An admitted call of `method`: learn its kind if that is how this side learns."""

    def settle(self, method: str, unary: bool, *, fast: bool) -> None:
        """A call that ended OK, whose sealed end said whether the method is `unary`."""

    def told(self, method: str, asked: bool) -> bool:
        """Whether this side seals "unary" into the end of an OK call of `method`."""
        return False

    def strip(self, trailers: Metadata) -> Metadata:
        """The upstream's trailers: a kind entry (ours is only ever a request entry) never
        passes."""
        return _without_kind(trailers)

    def failed(self, method: str, code: grpc.StatusCode) -> None:
        """A fast-path call ended with `code` from upstream."""
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            self.ran_out_of_time(method, "upstream answered DEADLINE_EXCEEDED")
        elif code in MAYBE_WRONG_KIND:
            self.kinds.forget(method, f"upstream answered {code.name}")

    def ran_out_of_time(self, method: str, why: str) -> None:
        """A fast-path call ended by a deadline: the kind may be wrong (a streaming method
        served as unary waits for its deadline)."""
        self.kinds.forget(method, why)

    def streams(self, method: str, why: str) -> None:
        """A call of `method` showed it streams (`why`: two requests, or two responses):
        certain, so its calls take the stream path from then on."""
        self.kinds.learn(method, False, why)


class KindTeller(KindExchange):
    """The in-proxy: learns kinds from its upstream's reflection (`learner`) and tells them
    to callers that asked, in the `KIND_KEY` trailer."""

    def __init__(self, kinds: MethodKinds, learner: ReflectionLearner | None) -> None:
        super().__init__(kinds)
        self._learner = learner

    def asked(self, metadata: Metadata) -> bool:
        return (KIND_KEY, ASK_KIND) in metadata

    def consider(self, method: str) -> None:
        if self._learner is not None and method not in self.kinds.unary:
            self._learner.consider(method)

    def told(self, method: str, asked: bool) -> bool:
        return asked and method in self.kinds.unary

    def streams(self, method: str, why: str) -> None:
        # Its kinds come from reflection only: what callers send proves nothing here (an
        # out-proxy of an earlier version sends a request and an END record).
        pass

    def failed(self, method: str, code: grpc.StatusCode) -> None:
        super().failed(method, code)
        if code in MAYBE_WRONG_KIND and code != grpc.StatusCode.DEADLINE_EXCEEDED \
                and self._learner is not None:
            self._learner.ask_again(method)

    def ran_out_of_time(self, method: str, why: str) -> None:
        # Kinds from reflection: a deadline is almost always a slow app, so the method stays
        # and the upstream is asked again (see the module's docstring).
        if self._learner is not None:
            self._learner.verify(method)
        else:
            super().ran_out_of_time(method, why)


class KindListener(KindExchange):
    """The out-proxy: asks the in-proxy for kinds, learns them from its trailer, strips it."""

    request_entries: Metadata = ((KIND_KEY, ASK_KIND),)

    def settle(self, method: str, unary: bool, *, fast: bool) -> None:
        if unary:
            self.kinds.learn(method, True, "the in-proxy's sealed end")
        elif fast:
            self.kinds.forget(method, "the in-proxy no longer says it is unary")
