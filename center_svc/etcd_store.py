"""The policy store on etcd, shared by any number of Center replicas (`etcd://.../PREFIX`).

Keys under PREFIX:
- `revision`: the revision counter, the latest revision's number. Every append is one etcd
  transaction that compares the counter with the value it read and, only if no other replica
  moved it meanwhile, writes the counter, the revision and its audit event together; a replica
  that lost the race reads again and retries, so concurrent applies through two replicas never
  lose or duplicate a revision.
- `revisions/NNNNNNNNNNNNNNNNNNNN`: one JSON record per revision, checked against its content
  hash when read (a damaged record fails loudly, as in the SQLite store).
- `audit/log/ID`, `audit/denied/ID`: audit events; an event's id is the etcd revision that
  created it, so ids grow in the order events happened, whichever replica wrote them.
- `signing-key`: the snapshot signing key's seed, sealed by the store's `SecretBox` (the KEK's
  box once `--kek` exists, `PLAINTEXT_BOX` in development mode). The first replica creates it
  in a transaction that only succeeds if none exists, so all replicas sign with one key.
- `registrations/SERVICE/ADDRESS`: an in-proxy endpoint, attached to the etcd lease of the
  replica its node registered through. The replica keeps its lease alive while it lives and
  deletes the key when the node's own lease lapses or its stream ends; if the replica dies,
  its lease lapses after `registration_ttl_s` and etcd deletes the keys itself.

`follow` watches the prefix and tells the Center of revisions stored by any replica and of the
registrations of all replicas, and probes etcd twice a second with a linearizable read: a
replica that cannot get one (etcd down, its member cut off from the quorum) is told so, and
stops accepting applies and node streams until etcd answers again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from center_svc import store as store_module
from center_svc.etcd_client import (
    EtcdClient,
    EtcdCredentials,
    EtcdError,
    EtcdUnavailable,
    Watch,
    prefix_end,
    wait_reachable,
)
from center_svc.secretbox import SecretBox, SecretBoxError
from center_svc.store import (
    AppendResult,
    AuditAction,
    AuditEvent,
    CorruptStoreError,
    Revision,
    StoreError,
    StoreListener,
    StoreOptions,
    StoreUnavailableError,
    content_hash_of,
)
from fastproxy.etcd import rpc_pb2 as etcd

log = logging.getLogger("center_svc.etcd_store")

PROBE_INTERVAL_S = 0.5
PROBE_TIMEOUT_S = 1.0
MAX_APPEND_TRIES = 100
_ENDPOINT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")
_PREFIX = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
_FORM = "etcd://HOST:PORT[,HOST:PORT...]/PREFIX"


def parse_etcd_url(url: str) -> tuple[tuple[str, ...], str]:
    """(endpoints, key prefix ending in '/') from `etcd://HOST:PORT[,HOST:PORT...]/PREFIX`;
    ValueError naming what is wrong otherwise."""
    rest = url.removeprefix("etcd://")
    hosts, slash, prefix = rest.partition("/")
    if "@" in hosts:
        raise ValueError(f"unsupported policy store URL: credentials do not go in the URL "
                         f"(it shows in the process list): use --etcd-user with "
                         f"--etcd-password-file or FASTPROXY_ETCD_PASSWORD; expected {_FORM}")
    prefix = prefix.strip("/")
    if not slash or not _PREFIX.match(prefix):
        raise ValueError(f"unsupported policy store URL {url!r}: name a key prefix "
                         f"(letters, digits, '._-', '/'); expected {_FORM}")
    endpoints = tuple(host.strip() for host in hosts.split(","))
    for endpoint in endpoints:
        match = _ENDPOINT.match(endpoint)
        if match is None or not 0 < int(match.group(2)) < 65536:
            raise ValueError(f"unsupported policy store URL {url!r}: {endpoint!r} is not "
                             f"HOST:PORT; expected {_FORM}")
    return endpoints, "/" + prefix + "/"


def open_etcd_store(url: str, options: StoreOptions) -> EtcdStore:
    endpoints, prefix = parse_etcd_url(url)
    credentials = options.etcd_credentials or EtcdCredentials()
    client = EtcdClient(endpoints, credentials)
    try:
        wait_reachable(client, options.open_timeout_s)
    except EtcdError as exc:
        client.close()
        raise StoreUnavailableError(f"cannot open policy store {url}: {exc}") from None
    return EtcdStore(client, prefix, where=url, secret_box=options.secret_box,
                     registration_ttl_s=options.registration_ttl_s)


def _new_seed() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw,
                                                      NoEncryption())


def _put(key: bytes, value: bytes, lease: int = 0) -> etcd.RequestOp:
    return etcd.RequestOp(request_put=etcd.PutRequest(key=key, value=value, lease=lease))


class EtcdStore:
    """A `PolicyStore` on etcd; blocking calls, safe from any thread."""

    shared = True

    def __init__(self, client: EtcdClient, prefix: str, *, where: str, secret_box: SecretBox,
                 registration_ttl_s: int = 15, clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._prefix = prefix.encode()
        self._where = where
        self._box = secret_box
        self._ttl = registration_ttl_s
        self._clock = clock
        self._seed: bytes | None = None
        self._closed = threading.Event()
        # registrations: what this replica's nodes registered, what it has put under its
        # lease, and what all replicas have registered (followed through the watch)
        self._reg_lock = threading.Lock()
        self._wanted: set[tuple[str, str]] = set()
        self._mine: set[tuple[str, str]] = set()
        self._lease = 0
        self._reg_wake = threading.Event()
        self._reg_thread: threading.Thread | None = None
        self._view: dict[tuple[str, str], None] = {}
        self._listener: StoreListener | None = None
        self._watch: Watch | None = None
        self._probe_thread: threading.Thread | None = None
        self._reachable = True
        latest = self.latest()  # fails now if the newest record is damaged
        log.info("etcd store %s opened at revision %d", where,
                 0 if latest is None else latest.revision)

    # -- keys --------------------------------------------------------------------------------

    def _key(self, *parts: str) -> bytes:
        return self._prefix + "/".join(parts).encode()

    def _revision_key(self, number: int) -> bytes:
        return self._key("revisions", f"{number:020d}")

    def _range(self, request: etcd.RangeRequest) -> etcd.RangeResponse:
        self._check_open()
        try:
            return self._client.range(request)
        except EtcdUnavailable as exc:
            raise StoreUnavailableError(f"policy store {self._where}: {exc}") from None
        except EtcdError as exc:
            raise StoreError(f"policy store {self._where}: {exc}") from None

    def _txn(self, request: etcd.TxnRequest) -> etcd.TxnResponse:
        self._check_open()
        try:
            return self._client.txn(request)
        except EtcdUnavailable as exc:
            raise StoreUnavailableError(f"policy store {self._where}: {exc}") from None
        except EtcdError as exc:
            raise StoreError(f"policy store {self._where}: {exc}") from None

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise StoreError(f"policy store {self._where!r} is closed")

    # -- revisions ---------------------------------------------------------------------------

    def latest(self) -> Revision | None:
        history = self.history(1)
        return history[0] if history else None

    def get(self, revision: int) -> Revision | None:
        if revision <= 0:
            return None
        found = self._range(etcd.RangeRequest(key=self._revision_key(revision))).kvs
        return self._revision_of(found[0]) if found else None

    def history(self, limit: int | None = None) -> list[Revision]:
        """Revisions, newest first; at most `limit` of them when given."""
        return [self._revision_of(kv) for kv in self._newest(
            "revisions", limit, etcd.RangeRequest.KEY, "history")]

    def append(self, yaml: str, author: str, comment: str, rolled_back_from: int = 0,
               *, peer: str = "") -> AppendResult:
        """Stores `yaml` as the next revision unless it equals the latest (then a no-op);
        the revision and its audit event are written in one transaction."""
        if rolled_back_from < 0:
            raise ValueError(f"rolled_back_from must be >= 0, got {rolled_back_from}")
        digest = content_hash_of(yaml)
        action = AuditAction.ROLLBACK if rolled_back_from else AuditAction.APPLY
        for _ in range(MAX_APPEND_TRIES):
            guard, latest = self._read_head()
            if latest is not None and latest.content_hash == digest:
                audit = self._audit_op(action, author, peer, latest.revision,
                                       f"unchanged: identical to revision {latest.revision}")
                if self._txn(etcd.TxnRequest(compare=[guard], success=[audit])).succeeded:
                    return AppendResult(applied=False, revision=latest)
                continue
            number = 1 if latest is None else latest.revision + 1
            if rolled_back_from >= number:
                raise ValueError(f"cannot roll back from revision {rolled_back_from}: "
                                 f"the latest revision is {number - 1}")
            revision = Revision(revision=number, created_unix=self._clock(), author=author,
                                comment=comment, content_hash=digest, yaml=yaml,
                                rolled_back_from=rolled_back_from)
            apply_id = uuid.uuid4().hex
            outcome = (f"rolled back to revision {rolled_back_from} as revision {number}"
                       if rolled_back_from else f"applied as revision {number}")
            request = etcd.TxnRequest(compare=[guard], success=[
                _put(self._key("revision"), str(number).encode()),
                _put(self._revision_key(number), self._record(revision, apply_id)),
                self._audit_op(action, author, peer, number, outcome)])
            try:
                if self._txn(request).succeeded:
                    return AppendResult(applied=True, revision=revision)
            except StoreUnavailableError as exc:
                if self._stored_by(number, apply_id):
                    return AppendResult(applied=True, revision=revision)
                raise StoreUnavailableError(f"{exc} (revision {number} may or may not have "
                                            "been stored: check the history)") from None
        raise StoreError(f"policy store {self._where}: gave up after {MAX_APPEND_TRIES} "
                         "concurrent writes won the race")

    def _read_head(self) -> tuple[etcd.Compare, Revision | None]:
        """The counter's state (as the compare that holds while nobody else writes) and the
        latest revision, read at one etcd revision."""
        counter = self._key("revision")
        start = self._key("revisions", "")
        reply = self._txn(etcd.TxnRequest(success=[
            etcd.RequestOp(request_range=etcd.RangeRequest(key=counter)),
            etcd.RequestOp(request_range=etcd.RangeRequest(
                key=start, range_end=prefix_end(start), limit=1,
                sort_order=etcd.RangeRequest.DESCEND, sort_target=etcd.RangeRequest.KEY))]))
        counter_kvs = reply.responses[0].response_range.kvs
        latest_kvs = reply.responses[1].response_range.kvs
        latest = self._revision_of(latest_kvs[0]) if latest_kvs else None
        if not counter_kvs:
            if latest is not None:
                raise CorruptStoreError(f"policy store {self._where}: revisions exist but the "
                                        "revision counter is missing")
            return etcd.Compare(key=counter, target=etcd.Compare.VERSION,
                                result=etcd.Compare.EQUAL, version=0), None
        if latest is None or str(latest.revision).encode() != counter_kvs[0].value:
            raise CorruptStoreError(f"policy store {self._where}: the revision counter "
                                    f"({counter_kvs[0].value!r}) does not match the latest "
                                    "stored revision")
        return etcd.Compare(key=counter, target=etcd.Compare.MOD, result=etcd.Compare.EQUAL,
                            mod_revision=counter_kvs[0].mod_revision), latest

    def _stored_by(self, number: int, apply_id: str) -> bool:
        """After a write whose outcome is unknown: did this very apply store `number`?"""
        try:
            found = self._client.range(etcd.RangeRequest(key=self._revision_key(number))).kvs
        except EtcdError:
            return False
        return bool(found) and json.loads(found[0].value).get("apply_id") == apply_id

    def _record(self, revision: Revision, apply_id: str) -> bytes:
        return json.dumps({
            "revision": revision.revision, "created_unix": revision.created_unix,
            "author": revision.author, "comment": revision.comment,
            "content_hash": revision.content_hash, "yaml": revision.yaml,
            "rolled_back_from": revision.rolled_back_from, "apply_id": apply_id,
        }).encode()

    def _revision_of(self, kv: etcd.KeyValue) -> Revision:
        name = kv.key.decode(errors="replace")
        try:
            record = json.loads(kv.value)
            revision = Revision(
                revision=int(record["revision"]), created_unix=float(record["created_unix"]),
                author=str(record["author"]), comment=str(record["comment"]),
                content_hash=str(record["content_hash"]), yaml=str(record["yaml"]),
                rolled_back_from=int(record["rolled_back_from"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptStoreError(f"policy store {self._where}: {name} is not a readable "
                                    f"revision record ({exc})") from None
        if kv.key != self._revision_key(revision.revision):
            raise CorruptStoreError(f"policy store {self._where}: {name} holds revision "
                                    f"{revision.revision}")
        if content_hash_of(revision.yaml) != revision.content_hash:
            raise CorruptStoreError(f"policy store {self._where}: revision "
                                    f"{revision.revision} is corrupt (its stored hash does "
                                    "not match its YAML)")
        return revision

    # -- audit -------------------------------------------------------------------------------

    def _audit_op(self, action: AuditAction, actor: str, peer: str, revision: int,
                  detail: str) -> etcd.RequestOp:
        if revision < 0:
            raise ValueError(f"audit revision must be >= 0, got {revision}")
        folder = "denied" if action is AuditAction.DENIED else "log"
        value = json.dumps({"time_unix": self._clock(), "actor": actor, "peer": peer,
                            "action": AuditAction(action).value, "revision": revision,
                            "detail": _clip(detail, store_module.MAX_DETAIL_CHARS)})
        return _put(self._key("audit", folder, uuid.uuid4().hex), value.encode())

    def record_audit(self, action: AuditAction, actor: str, detail: str, *, peer: str = "",
                     revision: int = 0) -> AuditEvent:
        """Stores one audit event (a refusal or a denied call) and returns it; only the newest
        `MAX_DENIED_EVENTS` `denied` events are kept."""
        operation = self._audit_op(action, actor, peer, revision, detail)
        reply = self._txn(etcd.TxnRequest(success=[operation]))
        put = operation.request_put
        event = self._audit_event_of(etcd.KeyValue(key=put.key, value=put.value,
                                                   create_revision=reply.header.revision))
        if action is AuditAction.DENIED:
            self._prune_denied()
        return event

    def _prune_denied(self) -> None:
        start = self._key("audit", "denied", "")
        end = prefix_end(start)
        count = self._range(etcd.RangeRequest(key=start, range_end=end, count_only=True)).count
        excess = count - store_module.MAX_DENIED_EVENTS
        if excess <= 0:
            return
        oldest = self._range(etcd.RangeRequest(
            key=start, range_end=end, limit=excess, keys_only=True,
            sort_order=etcd.RangeRequest.ASCEND, sort_target=etcd.RangeRequest.CREATE)).kvs
        self._txn(etcd.TxnRequest(success=[
            etcd.RequestOp(request_delete_range=etcd.DeleteRangeRequest(key=kv.key))
            for kv in oldest]))

    def audit_events(self, limit: int | None = None) -> list[AuditEvent]:
        """Audit events, newest first; at most `limit` of them when given."""
        return [self._audit_event_of(kv) for kv in self._newest(
            "audit", limit, etcd.RangeRequest.CREATE, "audit")]

    def _newest(self, folder: str, limit: int | None, sort_target: int,
                what: str) -> Sequence[etcd.KeyValue]:
        """The keys under `folder`, newest first by `sort_target`; at most `limit`."""
        if limit is not None and limit < 0:
            raise ValueError(f"{what} limit must be >= 0, got {limit}")
        if limit == 0:
            return []
        start = self._key(folder, "")
        found: Sequence[etcd.KeyValue] = self._range(etcd.RangeRequest(
            key=start, range_end=prefix_end(start), limit=limit or 0,
            sort_order=etcd.RangeRequest.DESCEND, sort_target=sort_target)).kvs
        return found

    def _audit_event_of(self, kv: etcd.KeyValue) -> AuditEvent:
        try:
            record = json.loads(kv.value)
            return AuditEvent(int(kv.create_revision), float(record["time_unix"]),
                              str(record["actor"]), str(record["peer"]),
                              AuditAction(record["action"]), int(record["revision"]),
                              str(record["detail"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptStoreError(f"policy store {self._where}: audit event "
                                    f"{kv.key.decode(errors='replace')} is malformed "
                                    f"({exc})") from None

    # -- signing key -------------------------------------------------------------------------

    def signing_key_seed(self) -> bytes:
        """The one Ed25519 seed all replicas sign with; the first replica to ask creates it."""
        if self._seed is not None:
            return self._seed
        key = self._key("signing-key")
        reply = self._txn(etcd.TxnRequest(
            compare=[etcd.Compare(key=key, target=etcd.Compare.CREATE,
                                  result=etcd.Compare.EQUAL, create_revision=0)],
            success=[_put(key, self._box.seal(_new_seed()))],
            failure=[etcd.RequestOp(request_range=etcd.RangeRequest(key=key))]))
        if reply.succeeded:
            sealed = self._range(etcd.RangeRequest(key=key)).kvs[0].value
        else:
            sealed = reply.responses[0].response_range.kvs[0].value
        try:
            seed = self._box.open(sealed)
        except SecretBoxError as exc:
            raise StoreError(f"policy store {self._where}: cannot open the signing key: "
                             f"{exc}") from None
        if len(seed) != store_module.SEED_BYTES:
            raise CorruptStoreError(f"policy store {self._where} holds a malformed signing key "
                                    f"(expected {store_module.SEED_BYTES} bytes)")
        if self._box.stale(sealed):  # sealed by an older KEK: again with the first one
            self._txn(etcd.TxnRequest(
                compare=[etcd.Compare(key=key, target=etcd.Compare.VALUE,
                                      result=etcd.Compare.EQUAL, value=sealed)],
                success=[_put(key, self._box.seal(seed))]))
            log.info("policy store %s: the snapshot-signing key is sealed again with the "
                     "first --kek (an older KEK sealed it)", self._where)
        self._seed = seed
        return seed

    # -- registrations -----------------------------------------------------------------------

    def _registration_of(self, key: bytes) -> tuple[str, str] | None:
        name = key[len(self._key("registrations", "")):].decode(errors="replace")
        service, slash, address = name.partition("/")
        return (service, address) if slash and service and address else None

    def registrations(self) -> dict[str, list[str]]:
        """The in-proxy endpoints registered through any replica, service -> sorted addresses."""
        start = self._key("registrations", "")
        found = self._range(etcd.RangeRequest(key=start, range_end=prefix_end(start),
                                              keys_only=True)).kvs
        return _grouped(pair for kv in found if (pair := self._registration_of(kv.key)))

    def save_registrations(self, registered: Mapping[str, Sequence[str]]) -> None:
        """This replica's registrations, now: written to etcd by a background thread (the
        caller is the event loop), under this replica's lease."""
        with self._reg_lock:
            self._wanted = {(service, address) for service, addresses in registered.items()
                            for address in addresses}
            if self._reg_thread is None:
                self._reg_thread = threading.Thread(target=self._keep_registrations,
                                                    name="etcd-registrations", daemon=True)
                self._reg_thread.start()
        self._reg_wake.set()

    def _keep_registrations(self) -> None:
        while not self._closed.is_set():
            self._reg_wake.wait(max(self._ttl / 3, 0.2))
            self._reg_wake.clear()
            if self._closed.is_set():
                return
            try:
                self._sync_registrations()
            except EtcdError as exc:
                log.warning("registrations not written to etcd yet: %s", exc)
                self._closed.wait(0.2)
                self._reg_wake.set()

    def _sync_registrations(self) -> None:
        client = self._client
        if self._lease and client.lease_keepalive(self._lease) <= 0:
            log.warning("this replica's etcd lease lapsed; registering its endpoints again")
            self._lease, self._mine = 0, set()
        with self._reg_lock:
            wanted = set(self._wanted)
        if wanted and not self._lease:
            self._lease = client.lease_grant(self._ttl)
        for service, address in sorted(wanted - self._mine):
            client.put(self._key("registrations", service, address), b"", self._lease)
            self._mine.add((service, address))
        for service, address in sorted(self._mine - wanted):
            key = self._key("registrations", service, address)
            # only while the key is still ours: the node may have registered through another
            # replica since, which put the key under that replica's lease
            client.txn(etcd.TxnRequest(
                compare=[etcd.Compare(key=key, target=etcd.Compare.LEASE,
                                      result=etcd.Compare.EQUAL, lease=self._lease)],
                success=[etcd.RequestOp(request_delete_range=etcd.DeleteRangeRequest(
                    key=key))]))
            self._mine.discard((service, address))

    # -- following ---------------------------------------------------------------------------

    def follow(self, listener: StoreListener) -> None:
        """Tells `listener` (from this store's threads) of every revision stored and every
        registration change by any replica, and of etcd becoming unreachable or back."""
        self._listener = listener
        try:
            revision = self._resync()
        except EtcdError as exc:  # the watch and the probe catch up once etcd answers
            log.warning("cannot read etcd now: %s", exc)
            revision = 0
        self._watch = self._client.watch(self._prefix, revision + 1, self._on_watch,
                                         self._on_watch_lost)
        self._probe_thread = threading.Thread(target=self._probe, name="etcd-probe",
                                              daemon=True)
        self._probe_thread.start()

    def _resync(self) -> int:
        """Reads the registrations and the counter afresh; the etcd revision read at."""
        start = self._key("registrations", "")
        reply = self._client.range(etcd.RangeRequest(key=start, range_end=prefix_end(start),
                                                     keys_only=True))
        self._view = {pair: None for kv in reply.kvs
                      if (pair := self._registration_of(kv.key))}
        listener = self._listener
        if listener is not None:
            listener.registrations_changed(_grouped(self._view))
            counter = self._client.get(self._key("revision"))
            if counter is not None:
                listener.revision_stored(int(counter.value))
        return int(reply.header.revision)

    def _on_watch(self, response: etcd.WatchResponse) -> None:
        listener = self._listener
        if listener is None:
            return
        counter = self._key("revision")
        registrations = self._key("registrations", "")
        registrations_changed = False
        for event in response.events:
            if event.kv.key == counter and event.type == etcd.Event.PUT:
                listener.revision_stored(int(event.kv.value))
            elif (event.kv.key.startswith(registrations)
                  and (pair := self._registration_of(event.kv.key)) is not None):
                if event.type == etcd.Event.PUT:
                    registrations_changed |= pair not in self._view
                    self._view[pair] = None
                else:
                    registrations_changed |= self._view.pop(pair, 0) is None
        if registrations_changed:
            listener.registrations_changed(_grouped(self._view))

    def _on_watch_lost(self, reason: str) -> None:
        watch = self._watch
        if watch is not None and watch.next_revision == 0:  # compacted: read afresh
            try:
                watch.next_revision = self._resync() + 1
            except EtcdError as exc:
                log.warning("cannot read etcd afresh after compaction: %s", exc)

    def _probe(self) -> None:
        counter = self._key("revision")
        while not self._closed.wait(PROBE_INTERVAL_S):
            try:
                self._client.range(etcd.RangeRequest(key=counter, count_only=True),
                                   timeout_s=PROBE_TIMEOUT_S)
                reachable, reason = True, ""
            except EtcdError as exc:
                reachable, reason = False, str(exc)
            if reachable != self._reachable:
                self._reachable = reachable
                log.warning("etcd %s", "reachable again" if reachable else
                            f"unreachable: {reason}")
                if self._listener is not None:
                    self._listener.reachability_changed(reachable, reason)
                if reachable:
                    # what was missed while cut off also arrives through the watch; reading
                    # afresh now makes the replica current before nodes come back to it
                    with contextlib.suppress(EtcdError):
                        self._resync()

    def close(self) -> None:
        """Stops following. The replica's lease is left to lapse: its nodes register again
        through another replica meanwhile, so their routes never go missing."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._reg_wake.set()
        if self._watch is not None:
            self._watch.stop()
        for thread in (self._probe_thread, self._reg_thread):
            if thread is not None:
                thread.join(timeout=5)
        self._client.close()


def _grouped(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for service, address in sorted(pairs):
        grouped.setdefault(service, []).append(address)
    return grouped


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
