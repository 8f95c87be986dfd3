"""Sealing and opening the app's own message objects, its generated classes unchanged.

A sealed message is a valid protobuf encoding: the envelope rides in field 536870911, which
every message class keeps as an unknown field and writes back byte for byte. So a request is
serialized, sealed, and parsed back into a "carrier" of its own class for the stub's
serializer; a response arrives parsed into its class holding only that unknown field, and is
serialized again to be opened. Raw-bytes methods (no serializer) are sealed as they are.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from google.protobuf.message import DecodeError

from fastproxy.pipeline.reasons import FastProxyError, Reason
from fastproxy.pipeline.stages import OutboundCall


class MessageCodec(Protocol):
    """What one attempt does to each message on its way out and in; `callee` is the
    service the policy routed the call to ("" when the SDK does not route)."""

    @property
    def callee(self) -> str: ...

    def request(self, message: Any) -> Any: ...

    def response(self, message: Any) -> Any: ...


class PassThrough:
    """Sidecar mode: the out-proxy seals and opens."""

    callee = ""

    def request(self, message: Any) -> Any:
        return message

    def response(self, message: Any) -> Any:
        return message


PASS_THROUGH = PassThrough()


class SealedMessages:
    """Embedded mode: the pipeline's `OutboundCall` seals requests and opens responses."""

    __slots__ = ("_call",)

    def __init__(self, call: OutboundCall) -> None:
        self._call = call

    @property
    def callee(self) -> str:
        return self._call.destination

    def request(self, message: Any) -> Any:
        if isinstance(message, bytes):
            return self._call.seal_request(message)
        sealed = self._call.seal_request(message.SerializeToString())
        carrier = type(message)()
        carrier.ParseFromString(sealed)
        return carrier

    def response(self, message: Any) -> Any:
        if isinstance(message, bytes):
            return self._call.open_response(message, time.time())
        plain = self._call.open_response(message.SerializeToString(), time.time())
        opened = type(message)()
        try:
            opened.ParseFromString(plain)
        except DecodeError:
            raise FastProxyError(Reason.MALFORMED,
                                 f"response is not a {type(message).__name__}") from None
        return opened
