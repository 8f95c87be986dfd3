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

import hashlib
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

# --- protocol version 2: what is authenticated, what is encrypted (docs/protocol.md, 5) ---

CALL_KEY = "fastproxy-call-bin"  # the CALL record
HEAD_KEY = "fastproxy-head-bin"  # the HEAD record
END_KEY = "fastproxy-end-bin"  # the STATUS record
SESSION_KEY = "fastproxy-session"  # "unknown": open a new session and try again
HELLO_KEY = "fastproxy-hello-bin"  # a handshake: request metadata and answering trailer
KIND_KEY = "fastproxy-kind"  # between an out-proxy and its in-proxy (proxy_svc.kinds)
# Entries of the protocol itself, never part of what a digest covers.
PROTOCOL_KEYS = frozenset({CALL_KEY, HEAD_KEY, END_KEY, SESSION_KEY, KIND_KEY, HELLO_KEY})

# Names an intermediary may set or change on the way: neither authenticated nor encrypted.
HOP_BY_HOP_KEYS = REQUEST_DROPPED_KEYS | frozenset({
    "traceparent", "tracestate", "grpc-trace-bin", "baggage", "b3", "forwarded", "via",
    "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-real-ip", "x-request-id",
})
HOP_BY_HOP_PREFIXES = (":", "x-b3-", "x-envoy-")
# Credentials: encrypted inside the records, never on the wire in the clear.
SECRET_KEYS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
DIGEST_CONTEXT = b"fastproxy-v2 metadata\0"
EMPTY_DIGEST = hashlib.sha256(DIGEST_CONTEXT).digest()  # of a list with nothing covered


def is_hop_by_hop(key: str) -> bool:
    return key in HOP_BY_HOP_KEYS or key.startswith(HOP_BY_HOP_PREFIXES)


def value_bytes(value: MetadataValue) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def split_secrets(metadata: Iterable[Metadatum], secret: frozenset[str]
                  ) -> tuple[Metadata, Metadata]:
    """(what travels in the clear, the entries whose names are in `secret`)."""
    if not metadata:
        return (), ()
    clear: list[Metadatum] = []
    hidden: list[Metadatum] = []
    for entry in metadata:
        (hidden if entry[0] in secret else clear).append(entry)
    return tuple(clear), tuple(hidden)


def _name(entry: Metadatum) -> str:
    return entry[0]


def metadata_digest(metadata: Iterable[Metadatum], secret: frozenset[str]) -> bytes:
    """The digest a record carries of a metadata list: every entry but hop-by-hop ones, the
    protocol's own and secret ones (those travel encrypted), sorted by name (values of one
    name keep their order)."""
    kept = [(key, value) for key, value in metadata
            if key not in PROTOCOL_KEYS and key not in secret and key not in HOP_BY_HOP_KEYS
            and not key.startswith(HOP_BY_HOP_PREFIXES)]
    if not kept:
        return EMPTY_DIGEST
    kept.sort(key=_name)
    digest = hashlib.sha256(DIGEST_CONTEXT)
    for key, value in kept:
        raw_key, raw_value = key.encode(), value_bytes(value)
        digest.update(len(raw_key).to_bytes(4, "big") + raw_key)
        digest.update(len(raw_value).to_bytes(4, "big") + raw_value)
    return digest.digest()


def has_app_entries(metadata: Iterable[Metadatum]) -> bool:
    """Whether `metadata` holds anything a digest would cover."""
    for key, _ in metadata:
        if key not in PROTOCOL_KEYS and key not in HOP_BY_HOP_KEYS \
                and not key.startswith(HOP_BY_HOP_PREFIXES):
            return True
    return False


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


MAX_HELLO_BYTES = 16 * 1024


def hello_of(metadata: Iterable[Metadatum] | None) -> bytes:
    """The hello (or its answer) that a handshake's metadata (or trailers) carry."""
    found = [value for key, value in (metadata or ()) if key == HELLO_KEY]
    if len(found) != 1 or not isinstance(found[0], bytes) or len(found[0]) > MAX_HELLO_BYTES:
        from fastproxy.pipeline.reasons import FastProxyError, Reason

        raise FastProxyError(Reason.UNAUTHENTICATED, "handshake refused: no single hello")
    return found[0]
