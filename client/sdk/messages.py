"""Sealing and opening the app's own message objects, its generated classes unchanged.

A sealed message is a valid protobuf encoding: the record rides in field 536870911, which
every message class keeps as an unknown field and writes back byte for byte. So a request is
serialized, sealed, and parsed back into a "carrier" of its own class for the stub's
serializer; a response arrives parsed into its class holding only that unknown field, and is
serialized again to be opened. Raw-bytes methods (no serializer) are sealed as they are.

Besides messages, an attempt checks what the callee sealed of its answer (headers, status,
trailers) and hands the app what it would get behind an in-proxy: the app's entries, its
credentials restored, none of the protocol's.
"""

from __future__ import annotations

from typing import Any, Protocol

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from fastproxy.pipeline.metadata import Metadata
from fastproxy.pipeline.reasons import FastProxyError, Reason
from fastproxy.pipeline.stages import OutboundCall


class MessageCodec(Protocol):
    """What one attempt does to each part of the call on its way out and in; `callee` is
    the service the policy routed the call to ("" when the SDK does not route)."""

    @property
    def callee(self) -> str: ...

    @property
    def sealed(self) -> bool: ...

    def request(self, message: Any) -> Any: ...

    def end_requests(self) -> Any | None: ...

    def head(self, metadata: Metadata) -> Metadata: ...

    def response(self, message: Any) -> Any: ...

    def end(self, code: int, details: str, trailers: Metadata) -> Metadata: ...


class PassThrough:
    """Sidecar mode: the out-proxy seals, opens and checks."""

    callee = ""
    sealed = False

    def request(self, message: Any) -> Any:
        return message

    def end_requests(self) -> Any | None:
        return None

    def head(self, metadata: Metadata) -> Metadata:
        return metadata

    def response(self, message: Any) -> Any:
        return message

    def end(self, code: int, details: str, trailers: Metadata) -> Metadata:
        return trailers


PASS_THROUGH = PassThrough()


def request_class(method: str) -> type[Any] | None:
    """The request message class of `method` ("/pkg.Service/Method") from the protobuf
    descriptors the app imported, or None (a raw-bytes method, or one not found)."""
    try:
        service_name, method_name = method[1:].rsplit("/", 1)
        service = descriptor_pool.Default().FindServiceByName(service_name)
        descriptor = service.methods_by_name[method_name].input_type
    except (KeyError, ValueError):
        return None
    return message_factory.GetMessageClass(descriptor)


class SealedMessages:
    """Embedded mode: the pipeline's `OutboundCall` seals requests and opens (and checks)
    everything of the answer. `single`: the call takes one request (unary or server
    streaming), which is then sealed as the last."""

    __slots__ = ("_call", "_request_class", "_single")
    sealed = True

    def __init__(self, call: OutboundCall, single: bool) -> None:
        self._call = call
        self._single = single
        self._request_class: type[Any] | None = None

    @property
    def callee(self) -> str:
        return self._call.destination

    def request(self, message: Any) -> Any:
        if isinstance(message, bytes):
            return self._call.seal_request(message, self._single)
        self._request_class = type(message)
        return self._carrier(type(message), self._call.seal_request(message.SerializeToString(),
                                                                    self._single))

    def end_requests(self) -> Any | None:
        """The END record after a request stream, in the form the stub sends (a message of
        the request class, found from a request sent or the method's descriptor)."""
        sealed = self._call.end_requests()
        if sealed is None:
            return None
        cls = self._request_class or request_class(self._call.method)
        return sealed if cls is None else self._carrier(cls, sealed)

    @staticmethod
    def _carrier(cls: type[Any], sealed: bytes) -> Any:
        carrier = cls()
        carrier.ParseFromString(sealed)
        return carrier

    def head(self, metadata: Metadata) -> Metadata:
        return self._call.open_head(tuple(metadata or ()))

    def response(self, message: Any) -> Any:
        if message is None:  # grpc's answer to an OK status without the one response
            raise FastProxyError(Reason.UNAUTHENTICATED, "the response was cut short (no "
                                                         "message)")
        if isinstance(message, bytes):
            return self._call.open_response(message)
        plain = self._call.open_response(message.SerializeToString())
        opened = type(message)()
        try:
            opened.ParseFromString(plain)
        except DecodeError:
            raise FastProxyError(Reason.MALFORMED,
                                 f"response is not a {type(message).__name__}") from None
        return opened

    def end(self, code: int, details: str, trailers: Metadata) -> Metadata:
        return self._call.open_end(code, details or "", tuple(trailers or ()))


def checked_failure(messages: MessageCodec, code: int, details: str, initial: Metadata,
                    trailers: Metadata) -> tuple[Metadata, Metadata]:
    """The headers and trailers the app gets of an attempt that failed with `code`, once
    checked against what the callee sealed (sync and aio alike); raises `FastProxyError`
    when they do not check."""
    return messages.head(initial), messages.end(code, details, trailers)
