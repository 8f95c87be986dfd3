"""What metadata a proxy hop passes on, and what it strips.

Passed unchanged, both ways: every application entry, text and `-bin`, including
`grpc-status-details-bin` and tracing entries such as `grpc-trace-bin` and `traceparent`.

Stripped from requests:
- HTTP/2 pseudo-headers and hop-by-hop or transport headers (`te`, `content-type`,
  `content-length`, `grpc-timeout`, `grpc-encoding`, ...): they describe this hop, grpc sets its
  own on the next one, and forwarding them makes grpc refuse the call ("Invalid metadata").
- `user-agent`: grpc writes its own on the next hop whatever the call's metadata says
  (measured with grpcio 1.85: a `user-agent` entry in a grpc.aio call's metadata never reaches
  the server), so the upstream sees the proxy's grpc user agent, as with a direct grpc call
  from Python. Dropping it here just says so.
- Our own `fastproxy-*` entries: the pipeline consumes them on this hop; the next hop's are
  added by the pipeline itself (`added` below), so a client can never inject them.

Stripped from responses: only the same transport headers (grpc already removes most).
Response `fastproxy-*` entries pass: they come from a proxy further along the path.
"""

from __future__ import annotations

from collections.abc import Iterable

MetadataValue = str | bytes
Metadatum = tuple[str, MetadataValue]
Metadata = tuple[Metadatum, ...]

OUR_PREFIX = "fastproxy-"

TRANSPORT_KEYS = frozenset({
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te",
    "host", "content-type", "content-length", "accept-encoding", "grpc-timeout",
    "grpc-encoding", "grpc-accept-encoding", "grpc-status", "grpc-message",
})
REQUEST_DROPPED_KEYS = TRANSPORT_KEYS | {"user-agent"}


def forwarded_request_metadata(incoming: Iterable[Metadatum], added: Metadata = ()) -> Metadata:
    """The request metadata the next hop receives: `incoming` filtered, then `added` (the
    pipeline's own entries)."""
    kept = tuple(
        (key, value) for key, value in incoming
        if key not in REQUEST_DROPPED_KEYS and not key.startswith((":", OUR_PREFIX))
    )
    return kept + added if added else kept


def forwarded_response_metadata(incoming: Iterable[Metadatum] | None) -> Metadata:
    """Initial metadata or trailers of the upstream's response, as our client receives them."""
    if not incoming:
        return ()
    return tuple(
        (key, value) for key, value in incoming
        if key not in TRANSPORT_KEYS and not key.startswith(":")
    )


def grpc_service_of(method: str) -> str:
    """`/pkg.Service/Method` -> `pkg.Service`; "" for anything else."""
    cut = method.rfind("/")
    return method[1:cut] if method.startswith("/") and cut > 1 else ""
