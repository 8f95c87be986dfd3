"""The demo services of `python -m server_svc` (grpc.aio servicers; see protos/.../demo.proto).

`EchoServicer` answers every RPC kind with what it was sent. `CatalogServicer` is a small
in-memory catalog with lookups, filtered listings, validated writes, rich error details
(google.rpc.ResourceInfo / BadRequest in `grpc-status-details-bin`) and a revision carried
in initial metadata and trailers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status

from fastproxy.pipeline.metadata import Metadata
from fastproxy.v1 import demo_pb2, demo_pb2_grpc

ECHO_METADATA_PREFIX = "x-echo-"
ECHO_COUNT_TRAILER = "x-echo-count"
REVISION_KEY = "x-catalog-revision"
MAX_REPEAT = 1000
MAX_ID_LENGTH = 64
MAX_NAME_LENGTH = 200



def _echoed_metadata(context: grpc.aio.ServicerContext[object, object]) -> Metadata:
    return tuple((key, value) for key, value in (context.invocation_metadata() or ())
                 if key.startswith(ECHO_METADATA_PREFIX))


def _repeat(request: demo_pb2.EchoRequest) -> int:
    return max(1, min(int(request.repeat), MAX_REPEAT))


class EchoServicer(demo_pb2_grpc.EchoServicer):
    """Metadata `x-echo-*` comes back as initial metadata; trailer `x-echo-count` counts the
    responses."""

    async def Unary(self, request: demo_pb2.EchoRequest,
                    context: grpc.aio.ServicerContext[object, object]) -> demo_pb2.EchoResponse:
        await context.send_initial_metadata(_echoed_metadata(context))
        context.set_trailing_metadata(((ECHO_COUNT_TRAILER, "1"),))
        return demo_pb2.EchoResponse(text=request.text, payload=request.payload, index=0)

    async def ClientStream(self, request_iterator: AsyncIterator[demo_pb2.EchoRequest],
                           context: grpc.aio.ServicerContext[object, object]
                           ) -> demo_pb2.EchoResponse:
        await context.send_initial_metadata(_echoed_metadata(context))
        texts: list[str] = []
        payload = bytearray()
        async for request in request_iterator:
            texts.append(request.text)
            payload += request.payload
        context.set_trailing_metadata(((ECHO_COUNT_TRAILER, "1"),))
        return demo_pb2.EchoResponse(text=" ".join(texts), payload=bytes(payload),
                                     index=len(texts))

    async def ServerStream(self, request: demo_pb2.EchoRequest,
                           context: grpc.aio.ServicerContext[object, object]
                           ) -> AsyncIterator[demo_pb2.EchoResponse]:
        await context.send_initial_metadata(_echoed_metadata(context))
        count = _repeat(request)
        for index in range(count):
            yield demo_pb2.EchoResponse(text=request.text, payload=request.payload, index=index)
        context.set_trailing_metadata(((ECHO_COUNT_TRAILER, str(count)),))

    async def Bidi(self, request_iterator: AsyncIterator[demo_pb2.EchoRequest],
                   context: grpc.aio.ServicerContext[object, object]
                   ) -> AsyncIterator[demo_pb2.EchoResponse]:
        await context.send_initial_metadata(_echoed_metadata(context))
        index = 0
        async for request in request_iterator:
            for _ in range(_repeat(request)):
                yield demo_pb2.EchoResponse(text=request.text, payload=request.payload,
                                            index=index)
                index += 1
        context.set_trailing_metadata(((ECHO_COUNT_TRAILER, str(index)),))


SAMPLE_ITEMS: tuple[demo_pb2.Item, ...] = (
    demo_pb2.Item(id="book-001", name="The Art of Gardening", category="books",
                  price_cents=1999, tags=["garden", "hardcover"]),
    demo_pb2.Item(id="book-002", name="Rust in Practice", category="books",
                  price_cents=3950, tags=["programming"]),
    demo_pb2.Item(id="book-003", name="Python Networking", category="books",
                  price_cents=2900, tags=["programming", "grpc"]),
    demo_pb2.Item(id="tool-001", name="Garden Shears", category="tools",
                  price_cents=1450, tags=["garden"]),
    demo_pb2.Item(id="tool-002", name="Torque Wrench", category="tools", price_cents=6400),
    demo_pb2.Item(id="song-001", name="Echoes of Spring", category="music", price_cents=99),
)


class CatalogServicer(demo_pb2_grpc.CatalogServicer):
    """Answers from an in-memory catalog; every write bumps the revision. Each answer (and
    each error) carries `x-catalog-revision` as initial metadata and as a trailer."""

    def __init__(self, items: Iterable[demo_pb2.Item] = SAMPLE_ITEMS) -> None:
        self._items: dict[str, demo_pb2.Item] = {}
        for item in items:
            copy = demo_pb2.Item()
            copy.CopyFrom(item)
            self._items[item.id] = copy
        self.revision = 1

    async def _stamp(self, context: grpc.aio.ServicerContext[object, object]) -> Metadata:
        revision: Metadata = ((REVISION_KEY, str(self.revision)),)
        await context.send_initial_metadata(revision)
        context.set_trailing_metadata(revision)
        return revision

    async def GetItem(self, request: demo_pb2.GetItemRequest,
                      context: grpc.aio.ServicerContext[object, object]) -> demo_pb2.Item:
        revision = await self._stamp(context)
        item = self._items.get(request.id)
        if item is None:
            info = error_details_pb2.ResourceInfo(
                resource_type="demo.v1.Item", resource_name=request.id,
                description="no item with this id")
            await _abort(context, code_pb2.NOT_FOUND, f"item {request.id!r} not found",
                         [info], revision)
        assert item is not None
        return item

    async def ListItems(self, request: demo_pb2.ListItemsRequest,
                        context: grpc.aio.ServicerContext[object, object]
                        ) -> AsyncIterator[demo_pb2.Item]:
        await self._stamp(context)
        needle = request.name_contains.casefold()
        sent = 0
        for item_id in sorted(self._items):
            if request.after_id and item_id <= request.after_id:
                continue
            item = self._items[item_id]
            if request.category and item.category != request.category:
                continue
            if needle and needle not in item.name.casefold():
                continue
            if request.page_size and sent >= request.page_size:
                return
            yield item
            sent += 1

    async def PutItem(self, request: demo_pb2.PutItemRequest,
                      context: grpc.aio.ServicerContext[object, object]
                      ) -> demo_pb2.PutItemResponse:
        violations = _violations(request)
        if violations:
            revision = await self._stamp(context)
            fields = ", ".join(v.field for v in violations)
            await _abort(context, code_pb2.INVALID_ARGUMENT, f"invalid item: {fields}",
                         [error_details_pb2.BadRequest(field_violations=violations)], revision)
        created = request.item.id not in self._items
        stored = demo_pb2.Item()
        stored.CopyFrom(request.item)
        self._items[stored.id] = stored
        self.revision += 1
        await self._stamp(context)
        return demo_pb2.PutItemResponse(item=stored, created=created, revision=self.revision)

    async def Count(self, request: demo_pb2.CountRequest,
                    context: grpc.aio.ServicerContext[object, object]
                    ) -> demo_pb2.CountResponse:
        await self._stamp(context)
        count = sum(1 for item in self._items.values()
                    if not request.category or item.category == request.category)
        return demo_pb2.CountResponse(count=count)


def _violations(request: demo_pb2.PutItemRequest
                ) -> list[error_details_pb2.BadRequest.FieldViolation]:
    Violation = error_details_pb2.BadRequest.FieldViolation
    found: list[error_details_pb2.BadRequest.FieldViolation] = []
    if not request.HasField("item"):
        return [Violation(field="item", description="required")]
    item = request.item
    if not item.id:
        found.append(Violation(field="item.id", description="required"))
    elif len(item.id) > MAX_ID_LENGTH or not all(c.isalnum() or c in "-_." for c in item.id):
        found.append(Violation(field="item.id", description=f"at most {MAX_ID_LENGTH} "
                               "letters, digits, '-', '_' or '.'"))
    if not item.name.strip():
        found.append(Violation(field="item.name", description="required"))
    elif len(item.name) > MAX_NAME_LENGTH:
        found.append(Violation(field="item.name",
                               description=f"at most {MAX_NAME_LENGTH} characters"))
    if item.price_cents < 0:
        found.append(Violation(field="item.price_cents", description="must not be negative"))
    return found


async def _abort(context: grpc.aio.ServicerContext[object, object], code: int, message: str,
                 details: Sequence[error_details_pb2.ResourceInfo | error_details_pb2.BadRequest],
                 trailers: Metadata) -> None:
    """Ends the call with `code`, `message`, the details as google.rpc.Status in
    `grpc-status-details-bin`, and `trailers`."""
    packed = []
    for detail in details:
        any_detail = any_pb2.Any()
        any_detail.Pack(detail)
        packed.append(any_detail)
    status = rpc_status.to_status(status_pb2.Status(code=code, message=message, details=packed))
    await context.abort(status.code, status.details,
                        tuple(status.trailing_metadata) + tuple(trailers))


def add_demo_services(server: grpc.aio.Server) -> tuple[EchoServicer, CatalogServicer]:
    echo, catalog = EchoServicer(), CatalogServicer()
    demo_pb2_grpc.add_EchoServicer_to_server(echo, server)
    demo_pb2_grpc.add_CatalogServicer_to_server(catalog, server)
    return echo, catalog


DEMO_SERVICE_NAMES = tuple(
    demo_pb2.DESCRIPTOR.services_by_name[name].full_name for name in ("Echo", "Catalog"))
