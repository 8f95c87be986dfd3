"""Metadata in the types grpc itself hands an app, for what FastProxy hands it instead.

The pipeline works on plain `(key, value)` tuples. Where an app receives metadata from us
rather than from grpc (the SDK's own refusals and checked answers, an embedded server's
`invocation_metadata()`), it gets the types grpc would have given it, so that code written
for grpc keeps working (`for m in call.trailing_metadata(): m.key`):

- sync `grpc` (calls, errors, a server's `invocation_metadata()`, grpc.aio's server too):
  a tuple of `(key, value)` named tuples with `.key` and `.value`, grpc's own class;
- `grpc.aio` calls and `AioRpcError` on the client side: a `grpc.aio.Metadata`.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Iterable
from typing import Any

import grpc

from fastproxy.pipeline.metadata import Metadata


def _grpc_metadatum_class() -> Any:
    """grpc's own named tuple (`cygrpc._Metadatum`), so that an entry of ours has the very
    type of grpc's; a twin with the same fields if a grpc release moves it."""
    try:
        from grpc._cython import cygrpc

        return cygrpc._Metadatum
    except (ImportError, AttributeError):  # pragma: no cover - a future grpc layout
        return namedtuple("_Metadatum", ("key", "value"))


Metadatum = _grpc_metadatum_class()


def sync_metadata(entries: Iterable[tuple[str, str | bytes]] | None) -> Metadata:
    """`entries` as sync grpc gives metadata: a tuple of named tuples (`.key`, `.value`)."""
    made: Metadata = tuple(Metadatum(key, value) for key, value in entries or ())
    return made


def aio_metadata(entries: Iterable[tuple[str, str | bytes]] | None) -> grpc.aio.Metadata:
    """`entries` as a grpc.aio client call gives metadata."""
    if isinstance(entries, grpc.aio.Metadata):
        return entries
    return grpc.aio.Metadata(*(tuple(entries or ())))
