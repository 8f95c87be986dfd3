"""A small blocking client for the part of etcd's v3 API the Center's etcd store uses.

Built on stubs generated from `protos/fastproxy/etcd/rpc.proto` (see the README for why not a
third-party etcd library). It keeps one gRPC channel per endpoint and moves to the next endpoint
when one cannot be reached, so a Center given three members keeps working while one is down.
Every call has a deadline: a member that hangs (stopped, partitioned) costs at most
`timeout_s` per endpoint tried, never a stuck thread.

Watches and lease keep-alives are streams, each run by a daemon thread that reconnects (to the
next endpoint) until it is stopped. Watches carry etcd's `hasleader` metadata, so a member cut
off from its quorum ends them instead of going silent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

from fastproxy.etcd import rpc_pb2 as etcd
from fastproxy.etcd import rpc_pb2_grpc as etcd_grpc

log = logging.getLogger("center_svc.etcd")

DEFAULT_TIMEOUT_S = 2.0
_RETRY_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_REQUIRE_LEADER = (("hasleader", "true"),)
R = TypeVar("R")


class EtcdError(Exception):
    """etcd refused a request (bad credentials, permission, a malformed request)."""


class EtcdUnavailable(EtcdError):
    """No endpoint answered in time: etcd is down, or this process is cut off from it."""


@dataclass(frozen=True, slots=True)
class EtcdCredentials:
    """How the Center proves itself to etcd: a user and password (etcd's auth), client TLS, or
    both. Never read from the command line in the clear (see center_svc.config)."""

    user: str = ""
    password: str = field(default="", repr=False)
    ca: bytes | None = field(default=None, repr=False)
    cert: bytes | None = field(default=None, repr=False)
    key: bytes | None = field(default=None, repr=False)
    server_name: str = ""

    @property
    def uses_tls(self) -> bool:
        return self.ca is not None or self.cert is not None

    def channel(self, endpoint: str) -> grpc.Channel:
        options: list[tuple[str, Any]] = [
            # a member that stops answering is noticed by the call deadlines; keepalive
            # pings end a dead connection that no call is using
            ("grpc.keepalive_time_ms", 5_000),
            ("grpc.keepalive_timeout_ms", 2_000),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1_000),
        ]
        if not self.uses_tls:
            return grpc.insecure_channel(endpoint, options=options)
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        creds = grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key,
                                             certificate_chain=self.cert)
        return grpc.secure_channel(endpoint, creds, options=options)


def prefix_end(prefix: bytes) -> bytes:
    """The `range_end` that makes a range or watch cover every key starting with `prefix`."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\x00"  # every key


class EtcdClient:
    """Blocking calls to an etcd cluster, with failover between its endpoints."""

    def __init__(self, endpoints: Sequence[str], credentials: EtcdCredentials | None = None,
                 *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoint given")
        self.endpoints = tuple(endpoints)
        self.credentials = credentials or EtcdCredentials()
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._channels: dict[int, grpc.Channel] = {}
        self._current = 0
        self._token = ""
        self._closed = False

    # -- plumbing ----------------------------------------------------------------------------

    def _channel(self, index: int) -> grpc.Channel:
        with self._lock:
            if self._closed:
                raise EtcdUnavailable("etcd client is closed")
            channel = self._channels.get(index)
            if channel is None:
                channel = self.credentials.channel(self.endpoints[index])
                self._channels[index] = channel
            return channel

    def _metadata(self, index: int, *, refresh: bool = False) -> tuple[tuple[str, str], ...]:
        if not self.credentials.user:
            return ()
        if refresh or not self._token:
            stub = etcd_grpc.AuthStub(self._channel(index))
            reply = stub.Authenticate(etcd.AuthenticateRequest(
                name=self.credentials.user, password=self.credentials.password),
                timeout=self.timeout_s)
            self._token = reply.token
        return (("token", self._token),)

    def call(self, invoke: Callable[[grpc.Channel, tuple[tuple[str, str], ...], float], R],
             *, timeout_s: float | None = None, attempts: int | None = None) -> R:
        """Runs `invoke(channel, metadata, timeout)` on the current endpoint, moving on to
        the next when one cannot be reached; EtcdUnavailable when none answered."""
        timeout = timeout_s or self.timeout_s
        tries = attempts or len(self.endpoints)
        errors: list[str] = []
        for _ in range(tries):
            index = self._current
            try:
                try:
                    return invoke(self._channel(index), self._metadata(index), timeout)
                except grpc.RpcError as exc:
                    if (exc.code() != grpc.StatusCode.UNAUTHENTICATED
                            or not self.credentials.user):
                        raise
                    # the token expired (etcd's simple tokens live 5 minutes): once more
                    return invoke(self._channel(index), self._metadata(index, refresh=True),
                                  timeout)
            except grpc.RpcError as exc:
                code = exc.code()
                detail = exc.details()
                if code not in _RETRY_CODES:
                    raise EtcdError(f"etcd at {self.endpoints[index]} refused: "
                                    f"{code.name} {detail}") from None
                errors.append(f"{self.endpoints[index]}: {code.name}")
                with self._lock:
                    if self._current == index:
                        self._current = (index + 1) % len(self.endpoints)
        raise EtcdUnavailable("cannot reach etcd (" + "; ".join(errors) + ")")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            channel.close()

    # -- KV ----------------------------------------------------------------------------------

    def range(self, request: etcd.RangeRequest, *, timeout_s: float | None = None,
              attempts: int | None = None) -> etcd.RangeResponse:
        return self.call(lambda ch, md, t: etcd_grpc.KVStub(ch).Range(
            request, metadata=md, timeout=t), timeout_s=timeout_s, attempts=attempts)

    def get(self, key: bytes) -> etcd.KeyValue | None:
        found = self.range(etcd.RangeRequest(key=key)).kvs
        return found[0] if found else None

    def put(self, key: bytes, value: bytes, lease: int = 0) -> etcd.PutResponse:
        request = etcd.PutRequest(key=key, value=value, lease=lease)
        return self.call(lambda ch, md, t: etcd_grpc.KVStub(ch).Put(
            request, metadata=md, timeout=t))

    def txn(self, request: etcd.TxnRequest) -> etcd.TxnResponse:
        return self.call(lambda ch, md, t: etcd_grpc.KVStub(ch).Txn(
            request, metadata=md, timeout=t))

    # -- leases ------------------------------------------------------------------------------

    def lease_grant(self, ttl_s: int) -> int:
        reply = self.call(lambda ch, md, t: etcd_grpc.LeaseStub(ch).LeaseGrant(
            etcd.LeaseGrantRequest(TTL=ttl_s), metadata=md, timeout=t))
        if reply.error:
            raise EtcdError(f"etcd refused a lease: {reply.error}")
        return int(reply.ID)

    def lease_revoke(self, lease_id: int) -> None:
        self.call(lambda ch, md, t: etcd_grpc.LeaseStub(ch).LeaseRevoke(
            etcd.LeaseRevokeRequest(ID=lease_id), metadata=md, timeout=t))

    def lease_keepalive(self, lease_id: int) -> int:
        """Renews a lease once; its remaining TTL in seconds, 0 if it has already lapsed."""
        def once(ch: grpc.Channel, md: tuple[tuple[str, str], ...], t: float) -> int:
            replies = etcd_grpc.LeaseStub(ch).LeaseKeepAlive(
                iter([etcd.LeaseKeepAliveRequest(ID=lease_id)]), metadata=md, timeout=t)
            for reply in replies:
                return int(reply.TTL)
            return 0
        return self.call(once)

    # -- watches -----------------------------------------------------------------------------

    def watch(self, prefix: bytes, start_revision: int,
              on_response: Callable[[etcd.WatchResponse], None],
              on_lost: Callable[[str], None]) -> Watch:
        """Watches every key under `prefix` from `start_revision` on, in a daemon thread.

        `on_response` gets each response with events; `on_lost(reason)` is called when the
        stream broke and events may have been missed before it resumed (the watch goes on
        from the next revision it has not seen) or when etcd compacted past it (then the
        caller must read afresh; the watch resumes from the newest revision)."""
        watch = Watch(self, prefix, start_revision, on_response, on_lost)
        watch.start()
        return watch


class Watch:
    """One watch stream kept open by a daemon thread; `stop()` ends it."""

    def __init__(self, client: EtcdClient, prefix: bytes, start_revision: int,
                 on_response: Callable[[etcd.WatchResponse], None],
                 on_lost: Callable[[str], None]) -> None:
        self._client = client
        self._prefix = prefix
        self.next_revision = start_revision
        self._on_response = on_response
        self._on_lost = on_lost
        self._stopped = threading.Event()
        self._call: Any = None
        self._thread = threading.Thread(target=self._run, name="etcd-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        call = self._call
        if call is not None:
            call.cancel()
        self._thread.join(timeout=5)

    def _requests(self) -> Iterator[etcd.WatchRequest]:
        yield etcd.WatchRequest(create_request=etcd.WatchCreateRequest(
            key=self._prefix, range_end=prefix_end(self._prefix),
            start_revision=self.next_revision, progress_notify=True))
        self._stopped.wait()

    def _run(self) -> None:
        backoff = 0.1
        while not self._stopped.is_set():
            try:
                self._stream_once()
                reason = "watch stream ended"
            except EtcdUnavailable as exc:
                reason = str(exc)
            except grpc.RpcError as exc:
                reason = f"{exc.code().name} {exc.details()}"
            except Exception as exc:  # a watch must not die silently
                log.exception("etcd watch callback failed")
                reason = repr(exc)
            if self._stopped.is_set():
                return
            log.info("etcd watch interrupted (%s); resuming from revision %d", reason,
                     self.next_revision)
            self._on_lost(reason)
            self._stopped.wait(backoff)
            backoff = min(backoff * 2, 1.0)

    def _stream_once(self) -> None:
        client = self._client
        index = client._current
        channel = client._channel(index)
        metadata = client._metadata(index) + _REQUIRE_LEADER
        self._call = etcd_grpc.WatchStub(channel).Watch(self._requests(), metadata=metadata)
        if self._stopped.is_set():
            self._call.cancel()
        try:
            for response in self._call:
                if response.compact_revision:
                    # etcd no longer has the revisions we missed: read everything afresh
                    self.next_revision = 0
                    self._on_lost(f"compacted at revision {response.compact_revision}")
                    return
                if response.canceled:
                    raise EtcdUnavailable(f"watch canceled by etcd: {response.cancel_reason}")
                if response.header.revision:
                    self.next_revision = max(self.next_revision, response.header.revision + 1)
                if response.events:
                    self._on_response(response)
        except grpc.RpcError:
            if not self._stopped.is_set():
                with client._lock:
                    if client._current == index:
                        client._current = (index + 1) % len(client.endpoints)
                raise
        finally:
            self._call = None


def wait_reachable(client: EtcdClient, timeout_s: float) -> None:
    """Blocks until a linearizable read succeeds (etcd has a quorum) or raises
    EtcdUnavailable after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.range(etcd.RangeRequest(key=b"\x00", count_only=True))
            return
        except EtcdUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
