"""One admitted call in an embedded server, shared by the sync and the aio twins.

How the messages are reached without touching the app's handlers: requests arrive sealed
(each record rides in an unknown protobuf field, so any message class parses it), and grpc
hands each message to the handler's `request_deserializer` and each streamed response to
its `response_serializer`. Per call, the handler is rebuilt with a deserializer that opens
then parses and a serializer that serializes then seals; a unary response is sealed here
before it is returned (its STATUS record must count it). A request that fails to open does
not raise inside grpc (which would answer INTERNAL): the deserializer hands back a marker,
and the call ends with the pipeline's status, sealed, as the in-proxy would.

What the app sets about its answer (headers, trailers, code, details, abort) goes through a
wrapped servicer context, so the HEAD and STATUS records cover exactly what the caller gets.

What the app sees of its caller's metadata is what it would see behind an in-proxy
(`app_metadata`): none of the protocol's entries, the credentials the CALL record carried
restored, in grpc's own types. Its handler's `invocation_metadata()` and whatever runs
after this interceptor (the app's own interceptors, its generic handlers' lookup, which
get `AppCallDetails`) see that, and nothing of a call this interceptor refused.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
from grpc._cython.cygrpc import _HandlerCallDetails

from fastproxy.hosting.grpc_metadata import sync_metadata
from fastproxy.pipeline.metadata import OUR_PREFIX, Metadata
from fastproxy.pipeline.reasons import FastProxyError
from fastproxy.pipeline.stages import InboundCall

Serializer = Callable[[Any], bytes]
Deserializer = Callable[[bytes], Any]


class Refused:
    """What the deserializer hands over in place of a request that failed to open."""

    __slots__ = ("error",)

    def __init__(self, error: FastProxyError) -> None:
        self.error = error


class _EndOfRequests:
    """What the deserializer hands over for the END record of a request stream."""


END = _EndOfRequests()


def app_metadata(metadata: Metadata, restored: Metadata) -> Metadata:
    """The caller's metadata as the app gets it behind an in-proxy: every `fastproxy-`
    entry gone (the protocol's, and any a caller set), the credential entries the CALL
    record carried (`restored`) after the others, as grpc's server gives metadata."""
    kept = [(key, value) for key, value in metadata if not key.startswith(OUR_PREFIX)]
    return sync_metadata((*kept, *restored))


class AppCallDetails(namedtuple("AppCallDetails", ("method", "invocation_metadata")),
                     grpc.HandlerCallDetails):
    """The `HandlerCallDetails` a sync server's interceptor hands on to the app's
    interceptors and handlers."""


def aio_call_details(method: str, metadata: Metadata) -> grpc.HandlerCallDetails:
    """The aio twin of `AppCallDetails`: grpc.aio's server takes only its own class there
    (its Cython continuation checks the argument's type: "expected
    grpc._cython.cygrpc._HandlerCallDetails", grpcio 1.85)."""
    details: grpc.HandlerCallDetails = _HandlerCallDetails(method, metadata)
    return details


def app_exception_details(exc: BaseException) -> str:
    """The status message an app's own exception ends its call with (grpc's wording)."""
    return f"Exception calling application: {exc}"


class SealedCall:
    """One admitted call's transforms, the first refusal met while opening a request, and
    what the app set for its answer."""

    __slots__ = ("_single", "call", "code", "details", "ended", "error", "metadata", "trailers")

    def __init__(self, call: InboundCall, request_streaming: bool, metadata: Metadata) -> None:
        """`metadata`: the caller's, as the app gets it (`app_metadata`)."""
        self.call = call
        self.metadata = metadata
        self._single = not request_streaming
        self.error: FastProxyError | None = None
        self.trailers: Metadata = ()
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.ended = False  # the STATUS record was sealed

    # requests

    def deserializer(self, parse: Deserializer | None) -> Deserializer:
        def open_then_parse(sealed: bytes) -> Any:
            try:
                plain = self.call.open_request(sealed, self._single)
            except FastProxyError as error:
                return Refused(error)
            if plain is None:
                return END
            return parse(plain) if parse is not None else plain
        return open_then_parse

    def check(self, request: Any) -> Any:
        """The request itself; raises (and remembers) the refusal of one that did not open."""
        if isinstance(request, Refused):
            self._refuse(request.error)
        return request

    def _refuse(self, error: FastProxyError) -> None:
        if self.error is None:
            self.error = error
        raise error

    def finished(self) -> None:
        """The request stream ended: refused (and remembered) if it was cut short."""
        try:
            self.call.finish_requests()
        except FastProxyError as error:
            self._refuse(error)

    def requests(self, iterator: Iterator[Any]) -> Iterator[Any]:
        for request in iterator:
            if request is not END:
                yield self.check(request)
        self.finished()

    async def aio_requests(self, iterator: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for request in iterator:
            if request is not END:
                yield self.check(request)
        self.finished()

    # the answer

    def serializer(self, serialize: Serializer | None) -> Serializer:
        def serialize_then_seal(message: Any) -> bytes:
            plain = serialize(message) if serialize is not None else message
            return self.call.seal_response(plain)
        return serialize_then_seal

    def seal_unary(self, response: Any, serialize: Serializer | None) -> bytes:
        plain = serialize(response) if serialize is not None else response
        return self.call.seal_response(plain)

    def head(self, metadata: Metadata) -> Metadata:
        return self.call.seal_head(tuple(metadata))

    def end(self, code: grpc.StatusCode | None = None, details: str | None = None) -> Metadata:
        """The trailers that end the call, with its STATUS record (sealed once)."""
        self.ended = True
        code = code if code is not None else self.code or grpc.StatusCode.OK
        details = details if details is not None else self.details
        return self.call.seal_end(code.value[0], details or "", self.trailers)


class _Context:
    """What both twins of the app's context do alike: everything not about the answer
    passes through to grpc's context; what sets the answer is kept for sealing."""

    def __init__(self, real: Any, sealed: SealedCall) -> None:
        self._real = real
        self._sealed = sealed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def invocation_metadata(self) -> Metadata:
        return self._sealed.metadata

    def set_trailing_metadata(self, trailing_metadata: Metadata) -> None:
        self._sealed.trailers = tuple(trailing_metadata)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._sealed.code = code
        self._real.set_code(code)

    def set_details(self, details: str) -> None:
        self._sealed.details = details
        self._real.set_details(details)

    def finish(self) -> None:
        """The app's answer is complete: seal its end."""
        if not self._sealed.ended:
            self._real.set_trailing_metadata(self._sealed.end())


class SealingContext(_Context):
    """The app's view of a sync servicer context."""

    def send_initial_metadata(self, initial_metadata: Metadata) -> None:
        self._real.send_initial_metadata(self._sealed.head(initial_metadata))

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self._real.set_trailing_metadata(self._sealed.end(code, details))
        self._real.abort(code, details)

    def abort_with_status(self, status: grpc.Status) -> None:
        self._sealed.trailers = tuple(status.trailing_metadata or ())
        self.abort(status.code, status.details)


class AioSealingContext(_Context):
    """The app's view of a grpc.aio servicer context."""

    async def send_initial_metadata(self, initial_metadata: Metadata) -> None:
        await self._real.send_initial_metadata(self._sealed.head(initial_metadata))

    async def abort(self, code: grpc.StatusCode, details: str = "",
                    trailing_metadata: Metadata = ()) -> None:
        if trailing_metadata:
            self._sealed.trailers = tuple(trailing_metadata)
        await self._real.abort(code, details, self._sealed.end(code, details))

    async def abort_with_status(self, status: grpc.Status) -> None:
        await self.abort(status.code, status.details, tuple(status.trailing_metadata or ()))

    async def read(self) -> Any:
        """The next request, opened (grpc.aio's `read()`), or EOF once the stream ended as
        sealed."""
        while True:
            request = await self._real.read()
            if request is grpc.aio.EOF:
                self._sealed.finished()
                return request
            if request is not END:
                return self._sealed.check(request)
