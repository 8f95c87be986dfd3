"""Failed calls as the app's gRPC expects them: a `grpc.RpcError` that is also a finished
`grpc.Call` and `grpc.Future` (sync), or a `grpc.aio.AioRpcError` (aio). Either the SDK's
own refusal, with the contracted code and trailers `fastproxy-error: REASON`,
`fastproxy-proxy: client`, or (embedded mode) the callee's failure once checked against
its STATUS record, with the trailers the app would get behind an in-proxy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

import grpc

from fastproxy.hosting.grpc_metadata import aio_metadata, sync_metadata
from fastproxy.hosting.refusal import Refusal
from fastproxy.pipeline.metadata import Metadata


class RefusedCall(grpc.RpcError, grpc.Call, grpc.Future):
    """A finished, failed call; iterating it raises it, as a failed stream would."""

    def __init__(self, refusal: Refusal, initial: Metadata = ()) -> None:
        super().__init__(f"{refusal.code}: {refusal.details}")
        self.refusal = refusal
        self._initial = initial

    def __str__(self) -> str:
        return (f"<RefusedCall of fastproxy: status = {self.refusal.code}, "
                f"details = {self.refusal.details!r}>")

    # grpc.Call: metadata as grpc's own errors give it (entries with `.key`, `.value`)
    def initial_metadata(self) -> Metadata:
        return sync_metadata(self._initial)

    def trailing_metadata(self) -> Metadata:
        return sync_metadata(self.refusal.trailers)

    def code(self) -> grpc.StatusCode:
        return self.refusal.code

    def details(self) -> str:
        return self.refusal.details

    # grpc.RpcContext
    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False  # already terminated: never called, as grpc's own calls do

    # grpc.Future
    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> NoReturn:
        raise self

    def exception(self, timeout: float | None = None) -> RefusedCall:
        return self

    def traceback(self, timeout: float | None = None) -> Any:
        return self.__traceback__

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)

    # a refused stream
    def __iter__(self) -> RefusedCall:
        return self

    def __next__(self) -> NoReturn:
        raise self

    def next(self) -> NoReturn:
        raise self


def aio_refusal(refusal: Refusal) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(refusal.code, aio_metadata(()), aio_metadata(refusal.trailers),
                                refusal.details)
