"""Where a node's policy comes from: the Center's WatchPolicy stream, or a local YAML file.

Either source verifies and compiles each snapshot, then replaces the node's policy in one
assignment (`PolicyHolder.current`), so a call sees one policy, never a mix. The hot path
reads `holder.current` and takes no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import ipaddress
import logging
import os
import random
import socket
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import grpc
from google.protobuf.message import DecodeError

from fastproxy.node.acceptance import SnapshotAcceptor, role_name
from fastproxy.node.credentials import (
    CenterCredentials,
    check_center_connection,
    why_unreachable,
)
from fastproxy.node.holder import PolicyHolder
from fastproxy.node.watch_stream import AioWatchStream, ThreadedWatchStream, WatchStream
from fastproxy.policy.scope import content_hash, scope_snapshot
from fastproxy.policy.signing import SnapshotError
from fastproxy.v1 import center_pb2
from fastproxy.v1 import policy_pb2 as pb

log = logging.getLogger("fastproxy.node.watch")

T = TypeVar("T")
Compile = Callable[[pb.PolicySnapshot], T]


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    node_id: str
    role: int  # policy_pb2.ROLE_*
    service: str
    advertise: str = ""  # in-nodes: the address registered for the service


class SnapshotCache:
    """The last good signed snapshot on disk: written atomically, read back at start."""

    def __init__(self, directory: str, node: NodeIdentity) -> None:
        role = pb.Role.Name(node.role).removeprefix("ROLE_").lower()
        self.path = Path(directory) / f"{node.service}.{role}.snapshot"

    def load(self) -> pb.SignedSnapshot | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        signed = pb.SignedSnapshot()
        signed.ParseFromString(data)
        return signed

    def save(self, signed: pb.SignedSnapshot) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".snapshot-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(signed.SerializeToString())
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@dataclass(frozen=True, slots=True)
class CenterTarget:
    """One Center replica to dial: an address, and the name its TLS certificate carries when
    the address came from resolving that name."""

    address: str
    server_name: str = ""


def split_centers(center: str) -> list[str]:
    """`a:7070,b:7070` -> ['a:7070', 'b:7070']."""
    return [part.strip() for part in center.split(",") if part.strip()]


def resolve_centers(centers: Sequence[str]) -> list[CenterTarget]:
    """Every replica to try: each HOST:PORT given, and each address of a DNS name that has
    several (one replica per address). A name that does not resolve stays as it is (the
    dial fails and the node moves on)."""
    targets: list[CenterTarget] = []
    for center in centers:
        host, _, port = center.rpartition(":")
        bare = host.strip("[]")
        try:
            ipaddress.ip_address(bare)
            targets.append(CenterTarget(center))
            continue
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(bare, int(port), type=socket.SOCK_STREAM)
        except (OSError, ValueError):
            infos = []
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if len(addresses) <= 1:
            targets.append(CenterTarget(center))
            continue
        for address in addresses:
            shown = f"[{address}]" if ":" in address else address
            targets.append(CenterTarget(f"{shown}:{port}", server_name=bare))
    return targets


class CenterWatcher(Generic[T]):
    """Keeps a `WatchPolicy` stream open, reconnecting with backoff and jitter.

    `center` names one Center or several replicas of one (`a:7070,b:7070`, or a DNS name with
    several addresses). Each connection goes to a replica picked at random among those not yet
    tried since the last stream that worked, so nodes spread over the replicas, and a node
    whose replica died moves to another one at once; the backoff grows only when every
    replica failed in turn. The node says which revision it holds, so a replica never sends
    it an older one.

    Each snapshot is checked (`SnapshotAcceptor`: signed, by `pinned_key` if given, for this
    node's role and service, not older than the revision held), compiled and swapped in, then
    ACKed; one that fails is NACKed with the error and the last good policy stays. A Center
    off loopback needs TLS and `pinned_key` (CredentialError here otherwise).
    """

    def __init__(self, center: str, node: NodeIdentity, compile_snapshot: Compile[T],
                 holder: PolicyHolder[T], *, credentials: CenterCredentials | None = None,
                 pinned_key: bytes | None = None, cache_dir: str | None = None,
                 lease_seconds: int = 15, initial_backoff_s: float = 0.2,
                 max_backoff_s: float = 10.0, threaded: bool = False) -> None:
        self.center = center
        self.centers = split_centers(center)
        self.current: CenterTarget | None = None  # the replica of the last connection
        self.node = node
        self.compile = compile_snapshot
        self.holder = holder
        self.credentials = credentials or CenterCredentials()
        check_center_connection(center, uses_tls=self.credentials.uses_tls,
                                pinned_key=pinned_key)
        self.pinned_key = pinned_key
        self.acceptor = SnapshotAcceptor(node.role, node.service, pinned_key)
        self.cache = SnapshotCache(cache_dir, node) if cache_dir else None
        self._remember_cached_revision()
        self.lease_seconds = lease_seconds
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        # the stream on sync gRPC, read by a thread (hosts watching from a background loop
        # beside an app's grpc.aio loop: see fastproxy.node.watch_stream)
        self._stream = ThreadedWatchStream if threaded else AioWatchStream
        self.reconnects = 0
        self.connected = asyncio.Event()
        # why the Center refused this node's credential ("" while it does not): hosts that
        # wait for a first policy fail at once with it instead of waiting out their time
        self.refusal = ""
        self._refusal_listeners: list[Callable[[str], None]] = []
        self._unreachable = ""  # the last reason logged for a stream that could not start

    def on_refused(self, listener: Callable[[str], None]) -> None:
        self._refusal_listeners.append(listener)

    def _refused(self, details: str) -> None:
        refusal = (f"center {self.center} refused this node's credential "
                   f"({self.node.service}, role {role_name(self.node.role)}): {details}")
        if refusal != self.refusal:  # once, not at every retry
            log.error("%s", refusal)
        self.refusal = refusal
        for listener in self._refusal_listeners:
            listener(refusal)

    def _failed(self, target: CenterTarget, exc: grpc.RpcError) -> None:
        """Says why a stream failed: a refused credential once, as an error (and to the
        hosts waiting for a first policy); a TLS setting that cannot work, once, as a
        warning; anything else at info level (the Center restarting, a replica going)."""
        details = exc.details() or ""
        if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            self._refused(details or exc.code().name)
            return
        why = None
        # (plaintext: a stream cut as a Center stops would read as a TLS mismatch)
        if exc.code() == grpc.StatusCode.UNAVAILABLE and self.credentials.uses_tls:
            why = why_unreachable(details, uses_tls=self.credentials.uses_tls,
                                  has_certificate=self.credentials.tls_cert is not None)
        if why is not None and why.refused:
            self._refused(why.reason)
        elif why is not None and why.reason != self._unreachable:
            self._unreachable = why.reason
            log.warning("cannot reach center %s: %s (%s)", target.address, why.reason,
                        details)
        else:
            log.info("watch stream to %s ended: %s %s", target.address, exc.code().name,
                     details)

    def _remember_cached_revision(self) -> None:
        """The cache's revision is the one held, before any snapshot arrives: a restart
        must not let an older one in."""
        if self.cache is None:
            return
        try:
            cached = self.cache.load()
        except (OSError, ValueError, DecodeError) as exc:
            log.error("cached snapshot %s cannot be read: %s", self.cache.path, exc)
            return
        if cached is not None and self.acceptor.remember(cached):
            log.info("holding revision %d (from %s)", self.acceptor.held_revision,
                     self.cache.path)

    def load_cache(self) -> bool:
        """Serves the cached snapshot (the Center is unreachable); True if one was loaded."""
        if self.cache is None:
            return False
        try:
            signed = self.cache.load()
            if signed is None:
                return False
            self._install(signed)
        except (SnapshotError, ValueError) as exc:
            log.error("cached snapshot %s refused: %s", self.cache.path, exc)
            return False
        log.warning("center %s unreachable: serving cached revision %d from %s", self.center,
                    self.holder.revision, self.cache.path)
        return True

    async def run(self, cache_after_s: float = 2.0) -> None:
        """Runs until cancelled. If no policy arrived within `cache_after_s`, the cache is
        loaded while the stream keeps trying."""
        cache_timer = asyncio.get_running_loop().call_later(
            cache_after_s, lambda: self.holder.current is None and self.load_cache())
        backoff = self.initial_backoff_s
        untried: list[CenterTarget] = []
        try:
            while True:
                if not untried:
                    untried = await asyncio.to_thread(resolve_centers, self.centers)
                    if self.current in untried and len(untried) > 1:
                        untried.remove(self.current)  # elsewhere first, after a failure
                target = untried.pop(random.randrange(len(untried)))
                self.current = target
                try:
                    await self._stream_once(target)
                    backoff = self.initial_backoff_s
                except grpc.RpcError as exc:
                    self._failed(target, exc)
                if self.connected.is_set():
                    # The stream was up: this is a new outage, so back off from the start
                    # (not from where the last outage left it, up to max_backoff_s), and
                    # every replica is worth a try again.
                    backoff = self.initial_backoff_s
                    untried = []
                self.connected.clear()
                self.reconnects += 1
                delay = random.uniform(0.5, 1.0) * backoff
                if not untried:  # every replica failed in turn: back off further
                    backoff = min(backoff * 2, self.max_backoff_s)
                await asyncio.sleep(delay)
        finally:
            cache_timer.cancel()

    async def _stream_once(self, target: CenterTarget) -> None:
        credentials = self.credentials
        if target.server_name and credentials.uses_tls and not credentials.tls_server_name:
            # dialled by address: the certificate still names the Center's DNS name
            credentials = dataclasses.replace(credentials, tls_server_name=target.server_name)
        hello = center_pb2.WatchRequest(hello=center_pb2.NodeHello(
            node_id=self.node.node_id, role=self.node.role, service=self.node.service,
            known_revision=self.holder.revision, known_hash=self.holder.content_hash))
        stream: WatchStream = self._stream(credentials, target.address, hello)
        renew = None
        try:
            # Up once the Center took the hello: it sends its headers then (a replica may
            # have nothing new to send a node that holds the latest revision). A refusal
            # ends the call with no headers of its own: not up, so the backoff goes on
            # growing, and nothing more is written to a call the Center ended (a write
            # racing its end turns its status into INTERNAL "Internal error from Core",
            # grpc/grpc#36066).
            if await stream.taken():
                self.connected.set()
                if self.node.advertise and self.node.role == pb.ROLE_IN:
                    renew = asyncio.create_task(self._renew_lease(stream))
            async for response in stream:
                self.connected.set()
                self.refusal = ""
                stream.send(self._receive(response.snapshot))
        finally:
            if renew is not None:
                renew.cancel()
            await stream.close()

    async def _renew_lease(self, stream: WatchStream) -> None:
        register = center_pb2.WatchRequest(register=center_pb2.Register(
            address=self.node.advertise, lease_seconds=self.lease_seconds))
        while True:
            stream.send(register)
            await asyncio.sleep(max(self.lease_seconds / 3, 0.2))

    def _receive(self, signed: pb.SignedSnapshot) -> center_pb2.WatchRequest:
        try:
            revision = self._install(signed)
        except (SnapshotError, ValueError) as exc:
            log.error("snapshot refused (NACK): %s", exc)
            return center_pb2.WatchRequest(nack=center_pb2.Nack(
                revision=_revision_of(signed), content_hash=signed.content_hash,
                error=str(exc)))
        if self.cache is not None:
            try:
                self.cache.save(signed)
            except OSError as exc:
                log.error("cannot write snapshot cache %s: %s", self.cache.path, exc)
        log.info("policy revision %d in force", revision)
        return center_pb2.WatchRequest(ack=center_pb2.Ack(revision=revision,
                                                          content_hash=signed.content_hash))

    def _install(self, signed: pb.SignedSnapshot) -> int:
        snapshot = self.acceptor.check(signed)
        compiled = self.compile(snapshot)
        self.holder.replace(compiled, snapshot.revision, signed.content_hash)
        self.acceptor.accepted(signed, snapshot)
        return int(snapshot.revision)


def _revision_of(signed: pb.SignedSnapshot) -> int:
    snapshot = pb.PolicySnapshot()
    with contextlib.suppress(Exception):
        snapshot.ParseFromString(signed.snapshot)
    return int(snapshot.revision)


class FileWatcher(Generic[T]):
    """`--policy FILE` without a Center: the node scopes the file for itself, and reloads it
    whenever it changes; a bad edit is logged with every error and the last good stays."""

    def __init__(self, path: str, node: NodeIdentity, compile_snapshot: Compile[T],
                 holder: PolicyHolder[T], interval_s: float = 1.0) -> None:
        self.path = Path(path)
        self.node = node
        self.compile = compile_snapshot
        self.holder = holder
        self.interval_s = interval_s
        self._seen = ""
        self._revision = 0

    def load(self) -> None:
        """Loads the file now; raises PolicyError/ValueError/OSError if it is not usable."""
        from fastproxy.policy.schema import load_policy  # YAML only where a file is used

        data = self.path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest == self._seen:
            return
        self._seen = digest
        snapshot = scope_snapshot(load_policy(data), self.node.role, self.node.service)
        snapshot.revision = self._revision + 1
        compiled = self.compile(snapshot)
        self._revision += 1
        self.holder.replace(compiled, self._revision, content_hash(snapshot))
        log.info("policy file %s loaded as local revision %d", self.path, self._revision)

    async def run(self) -> None:
        from fastproxy.policy.schema import PolicyError

        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.load()
            except PolicyError as exc:
                log.error("policy file %s refused; the last good policy stays:\n  %s",
                          self.path, "\n  ".join(exc.errors))
            except (OSError, ValueError) as exc:
                log.error("policy file %s refused; the last good policy stays: %s",
                          self.path, exc)
