"""The Center's policy store: every applied policy as a numbered revision, plus the signing key.

One interface (`PolicyStore`), three backends:
- `sqlite:///relative.db`, `sqlite:////absolute.db`: one file, for one Center on one machine
  (the default), implemented here over the standard library's `sqlite3`;
- `memory://`: the same on `:memory:`, for tests; nothing outlives the store;
- `etcd://HOST:PORT[,HOST:PORT...]/PREFIX`: an etcd cluster shared by any number of Center
  replicas (`center_svc.etcd_store`). Such a store is `shared`: revisions and registrations
  can change behind a replica's back, and `follow` tells it when.

Durability and crash safety:
- The file runs in WAL mode with `synchronous=FULL`. NORMAL with WAL already survives a killed
  process (a commit is in the WAL before `COMMIT` returns), but may lose the last commits on a
  power loss; an apply is rare and an acknowledged apply must not disappear, so the fsync per
  commit is worth it.
- Each append is one `BEGIN IMMEDIATE` transaction that takes the write lock first, then
  computes the next revision number inside it, so a process killed at any moment leaves either
  the old latest revision or the new one, and two writers never pick the same number.
- Opening checks that the latest row's stored hash is the sha256 of its stored YAML, and every
  row read later is checked the same way, so a damaged store fails loudly instead of serving a
  policy nobody applied.

Every apply and rollback also writes an audit event in the same transaction as its revision (or
as the no-op it turned out to be), so a revision never exists without the record of who made it;
refusals and denied admin calls are audit events of their own. An event holds who, from where,
what and the outcome, never policy YAML: a refused policy may hold secrets, its validation errors
never do.

Schema versions (`PRAGMA user_version`): 1 revisions and the signing key; 2 adds
`audit_events`; 3 adds `registrations` (the in-proxy endpoints, kept across a restart). Opening
a file of an older version migrates it in one transaction.

The database also holds the Center's Ed25519 key seed (so pinned nodes keep verifying snapshots
across restarts); the file is therefore created with mode 0600.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from center_svc.secretbox import PLAINTEXT_BOX, PLAINTEXT_TAG, SecretBox, SecretBoxError

if TYPE_CHECKING:
    from center_svc.etcd_client import EtcdCredentials

DEFAULT_STORE_URL = "sqlite:///fastproxy-center.db"

SEED_BYTES = 32
_SEAL_OVERHEAD_MIN = 16  # an AEAD tag at least: a sealed seed is longer than this
log = logging.getLogger("center_svc.store")
# Denied admin calls come from anyone who can reach the port: keep only the newest ones, so a
# flood of bad credentials cannot grow the file without bound. Changes and refusals are kept.
MAX_DENIED_EVENTS = 1000
MAX_DETAIL_CHARS = 2000

_SQLITE_PREFIX = "sqlite:///"
_MEMORY_URL = "memory://"
_ETCD_PREFIX = "etcd://"
_URL_FORMS = (
    "expected sqlite:///relative/path.db, sqlite:////absolute/path.db, memory:// or "
    "etcd://HOST:PORT[,HOST:PORT...]/PREFIX"
)

_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS revisions (
    revision         INTEGER PRIMARY KEY,
    created_unix     REAL    NOT NULL,
    author           TEXT    NOT NULL,
    comment          TEXT    NOT NULL,
    content_hash     TEXT    NOT NULL,
    yaml             TEXT    NOT NULL,
    rolled_back_from INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS signing_key (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seed BLOB    NOT NULL
);
"""

_SCHEMA_V2_AUDIT = """
CREATE TABLE IF NOT EXISTS audit_events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    time_unix REAL    NOT NULL,
    actor     TEXT    NOT NULL,
    peer      TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    revision  INTEGER NOT NULL DEFAULT 0,
    detail    TEXT    NOT NULL
);
"""

_SCHEMA_V3_REGISTRY = """
CREATE TABLE IF NOT EXISTS registrations (
    service TEXT NOT NULL,
    address TEXT NOT NULL,
    PRIMARY KEY (service, address)
);
"""

# _MIGRATIONS[v] takes a database from schema version v to v + 1 (0: a new file).
_MIGRATIONS = (_SCHEMA_V1, _SCHEMA_V2_AUDIT, _SCHEMA_V3_REGISTRY)
SCHEMA_VERSION = len(_MIGRATIONS)

_COLUMNS = "revision, created_unix, author, comment, content_hash, yaml, rolled_back_from"
_AUDIT_COLUMNS = "id, time_unix, actor, peer, action, revision, detail"


class StoreError(Exception):
    """The policy store cannot be opened or used (missing folder, closed store, ...)."""


class CorruptStoreError(StoreError):
    """The stored data does not check out: the store must not be served from."""


class StoreUnavailableError(StoreError):
    """The store cannot be reached now (etcd down, or this replica cut off from it); nothing
    was changed, or (for a write cut off midway) the message says it may have been."""


@dataclass(frozen=True, slots=True)
class Revision:
    revision: int
    created_unix: float
    author: str
    comment: str
    content_hash: str
    yaml: str = field(repr=False)
    rolled_back_from: int = 0


class AuditAction(StrEnum):
    APPLY = "apply"
    ROLLBACK = "rollback"
    REFUSED_APPLY = "refused_apply"
    REFUSED_ROLLBACK = "refused_rollback"
    DENIED = "denied"  # an admin call refused for its credential


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One admin event: who (`actor`, a principal label such as `admin:alice`, `dev:local`,
    `file:PATH` or `anonymous`), from where (`peer`), what (`action`), the revision it made or
    found (0 if none) and the outcome (`detail`: the result or the refusal's reasons)."""

    id: int
    time_unix: float
    actor: str
    peer: str
    action: AuditAction
    revision: int
    detail: str


@dataclass(frozen=True, slots=True)
class AppendResult:
    applied: bool  # False: content equal to the latest revision, nothing written
    revision: Revision  # the new revision, or the existing latest one


class StoreListener(Protocol):
    """What a shared store tells its Center, from the store's own threads."""

    def revision_stored(self, revision: int) -> None:
        """A revision was stored (by this replica or another)."""

    def registrations_changed(self, registered: dict[str, list[str]]) -> None:
        """The registered in-proxy endpoints of every replica changed."""

    def reachability_changed(self, reachable: bool, reason: str) -> None:
        """The store became unreachable (`reason` says why) or reachable again."""


class PolicyStore(Protocol):
    @property
    def shared(self) -> bool:
        """True when other processes write to the same store (etcd): the Center must
        `follow` it."""

    def latest(self) -> Revision | None: ...
    def get(self, revision: int) -> Revision | None: ...
    def history(self, limit: int | None = None) -> list[Revision]: ...
    def append(
        self, yaml: str, author: str, comment: str, rolled_back_from: int = 0,
        *, peer: str = "",
    ) -> AppendResult: ...
    def record_audit(
        self, action: AuditAction, actor: str, detail: str, *, peer: str = "",
        revision: int = 0,
    ) -> AuditEvent: ...
    def audit_events(self, limit: int | None = None) -> list[AuditEvent]: ...
    def signing_key_seed(self) -> bytes: ...
    def registrations(self) -> dict[str, list[str]]: ...
    def save_registrations(self, registered: Mapping[str, Sequence[str]]) -> None: ...
    def follow(self, listener: StoreListener) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """What some backends need besides their URL."""

    # etcd: how to authenticate (user/password, TLS); None is plaintext without auth
    etcd_credentials: EtcdCredentials | None = None
    # etcd: seals the signing key kept in the store; the KEK's box once --kek is given
    secret_box: SecretBox = PLAINTEXT_BOX
    # etcd: how long a dead replica's registrations outlive it
    registration_ttl_s: int = 15
    # etcd: how long opening waits for the cluster to answer
    open_timeout_s: float = 10.0


def content_hash_of(yaml_text: str) -> str:
    """The sha256 hex digest of the YAML text encoded as UTF-8."""
    return hashlib.sha256(yaml_text.encode("utf-8")).hexdigest()


def sqlite_path_of(url: str) -> str | None:
    """The file path a store URL names, or None for `memory://`; ValueError otherwise.

    As in SQLAlchemy, three slashes then a relative path, four slashes for an absolute one.
    """
    if url == _MEMORY_URL:
        return None
    if url.startswith(_SQLITE_PREFIX):
        path = url[len(_SQLITE_PREFIX) :]
        if path and path != "/" and "?" not in path and "\x00" not in path:
            return path
    raise ValueError(f"unsupported policy store URL {url!r}: {_URL_FORMS}")


def open_store(url: str, options: StoreOptions | None = None) -> PolicyStore:
    """Open (creating if needed) the store a URL names."""
    if url.startswith(_ETCD_PREFIX):
        from center_svc.etcd_store import open_etcd_store  # gRPC stubs only where used

        return open_etcd_store(url, options or StoreOptions())
    path = sqlite_path_of(url)
    if path is None:
        return MemoryStore()
    return SqliteStore(path, secret_box=(options or StoreOptions()).secret_box)


def _new_seed() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        Encoding.Raw, PrivateFormat.Raw, NoEncryption()
    )


def _create_private_file(path: Path) -> None:
    """Create the database file with mode 0600 before SQLite does (it would use the umask).

    SQLite gives its -wal and -shm files the database file's mode, so they stay private too.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


class SqliteStore:
    """A `PolicyStore` over one SQLite database, a file or `:memory:`.

    Safe to call from several threads (the event loop and `asyncio.to_thread` workers): one
    connection, guarded by one lock.
    """

    shared = False

    def __init__(self, path: str, *, clock: Callable[[], float] = time.time,
                 secret_box: SecretBox = PLAINTEXT_BOX) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._box = secret_box  # seals the signing key in the file
        self._seed: bytes | None = None
        self._closed = False
        in_memory = path == ":memory:"
        self._where = "memory://" if in_memory else path
        if not in_memory:
            file = Path(path)
            if not file.parent.is_dir():
                raise StoreError(
                    f"cannot open policy store {path!r}: folder {str(file.parent)!r} "
                    "does not exist"
                )
            _create_private_file(file)
        try:
            # isolation_level=None: transactions are only the ones begun explicitly below.
            self._db = sqlite3.connect(
                path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open policy store {self._where!r}: {exc}") from exc
        try:
            if not in_memory:
                mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreError(
                        f"policy store {self._where!r} cannot use WAL journaling ({mode})"
                    )
                self._db.execute("PRAGMA synchronous=FULL")
            self._create_schema()
            latest = self._db.execute(
                f"SELECT {_COLUMNS} FROM revisions ORDER BY revision DESC LIMIT 1"
            ).fetchone()
            if latest is not None:
                self._revision_of(latest)
        except sqlite3.OperationalError as exc:
            self._db.close()
            raise StoreError(f"cannot open policy store {self._where!r}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise CorruptStoreError(
                f"policy store {self._where!r} is not a readable database: {exc}"
            ) from exc
        except StoreError:
            self._db.close()
            raise

    # -- PolicyStore -------------------------------------------------------------------------

    def latest(self) -> Revision | None:
        with self._locked():
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM revisions ORDER BY revision DESC LIMIT 1"
            ).fetchone()
            return None if row is None else self._revision_of(row)

    def get(self, revision: int) -> Revision | None:
        with self._locked():
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM revisions WHERE revision = ?", (revision,)
            ).fetchone()
            return None if row is None else self._revision_of(row)

    def history(self, limit: int | None = None) -> list[Revision]:
        """Revisions, newest first; at most `limit` of them when given."""
        if limit is not None and limit < 0:
            raise ValueError(f"history limit must be >= 0, got {limit}")
        with self._locked():
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM revisions ORDER BY revision DESC LIMIT ?",
                (-1 if limit is None else limit,),
            ).fetchall()
            return [self._revision_of(row) for row in rows]

    def append(
        self, yaml: str, author: str, comment: str, rolled_back_from: int = 0,
        *, peer: str = "",
    ) -> AppendResult:
        """Store `yaml` as a new revision, unless it equals the latest one (then a no-op).

        A rollback to revision N is `append(get(N).yaml, ..., rolled_back_from=N)`. Either way
        an audit event (`apply` or `rollback`, actor `author`, from `peer`) is written in the
        same transaction: both or neither are stored.
        """
        if rolled_back_from < 0:
            raise ValueError(f"rolled_back_from must be >= 0, got {rolled_back_from}")
        digest = content_hash_of(yaml)
        with self._locked(), self._write_transaction():
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM revisions ORDER BY revision DESC LIMIT 1"
            ).fetchone()
            latest = None if row is None else self._revision_of(row)
            action = AuditAction.ROLLBACK if rolled_back_from else AuditAction.APPLY
            if latest is not None and latest.content_hash == digest:
                self._insert_audit(action, author, peer, latest.revision,
                                   f"unchanged: identical to revision {latest.revision}")
                return AppendResult(applied=False, revision=latest)
            number = 1 if latest is None else latest.revision + 1
            if rolled_back_from >= number:
                raise ValueError(
                    f"cannot roll back from revision {rolled_back_from}: "
                    f"the latest revision is {number - 1}"
                )
            revision = Revision(
                revision=number,
                created_unix=self._clock(),
                author=author,
                comment=comment,
                content_hash=digest,
                yaml=yaml,
                rolled_back_from=rolled_back_from,
            )
            self._db.execute(
                f"INSERT INTO revisions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    revision.revision,
                    revision.created_unix,
                    revision.author,
                    revision.comment,
                    revision.content_hash,
                    revision.yaml,
                    revision.rolled_back_from,
                ),
            )
            outcome = (f"rolled back to revision {rolled_back_from} as revision {number}"
                       if rolled_back_from else f"applied as revision {number}")
            self._insert_audit(action, author, peer, number, outcome)
            return AppendResult(applied=True, revision=revision)

    def record_audit(
        self, action: AuditAction, actor: str, detail: str, *, peer: str = "",
        revision: int = 0,
    ) -> AuditEvent:
        """Store one audit event on its own (a refusal or a denied call) and return it.

        Applies and rollbacks are recorded by `append` itself. Only the newest
        `MAX_DENIED_EVENTS` `denied` events are kept.
        """
        with self._locked(), self._write_transaction():
            event = self._insert_audit(action, actor, peer, revision, detail)
            if action is AuditAction.DENIED:
                self._db.execute(
                    "DELETE FROM audit_events WHERE action = ? AND id <= ("
                    "SELECT id FROM audit_events WHERE action = ? "
                    "ORDER BY id DESC LIMIT 1 OFFSET ?)",
                    (AuditAction.DENIED.value, AuditAction.DENIED.value, MAX_DENIED_EVENTS),
                )
            return event

    def audit_events(self, limit: int | None = None) -> list[AuditEvent]:
        """Audit events, newest first; at most `limit` of them when given."""
        if limit is not None and limit < 0:
            raise ValueError(f"audit limit must be >= 0, got {limit}")
        with self._locked():
            rows = self._db.execute(
                f"SELECT {_AUDIT_COLUMNS} FROM audit_events ORDER BY id DESC LIMIT ?",
                (-1 if limit is None else limit,),
            ).fetchall()
            return [self._audit_event_of(row) for row in rows]

    def signing_key_seed(self) -> bytes:
        """The Center's Ed25519 private key seed, created and stored on the first call,
        sealed by the store's secret box (the KEK's with `--kek`). A key stored unsealed
        (before `--kek` was given, or by an older Center: the bare 32 bytes) is sealed in
        place once a KEK is given; a key sealed with a KEK is refused without it."""
        with self._locked():
            if self._seed is not None:
                return self._seed
            with self._write_transaction():
                row = self._db.execute("SELECT seed FROM signing_key WHERE id = 1").fetchone()
                if row is None:
                    seed = _new_seed()
                    self._db.execute("INSERT INTO signing_key (id, seed) VALUES (1, ?)",
                                     (self._box.seal(seed),))
                else:
                    seed, unsealed = self._stored_seed(row[0])
                    if unsealed and self._box is not PLAINTEXT_BOX:
                        self._db.execute("UPDATE signing_key SET seed = ? WHERE id = 1",
                                         (self._box.seal(seed),))
                        log.warning("policy store %s: the snapshot-signing key, stored "
                                    "unsealed before --kek was given, is sealed with it now "
                                    "(the key itself is unchanged)", self._where)
                    elif not unsealed and self._box.stale(row[0]):
                        self._db.execute("UPDATE signing_key SET seed = ? WHERE id = 1",
                                         (self._box.seal(seed),))
                        log.info("policy store %s: the snapshot-signing key is sealed again "
                                 "with the first --kek (an older KEK sealed it)", self._where)
            self._seed = seed
            return seed

    def _stored_seed(self, stored: object) -> tuple[bytes, bool]:
        """The seed the signing_key row holds, and whether it is held unsealed."""
        if not isinstance(stored, bytes):
            raise CorruptStoreError(f"policy store {self._where!r} holds a malformed signing "
                                    "key (not a blob)")
        if len(stored) == SEED_BYTES:  # as stored before the key was sealed
            return stored, True
        if len(stored) < SEED_BYTES + _SEAL_OVERHEAD_MIN:
            raise CorruptStoreError(f"policy store {self._where!r} holds a malformed signing "
                                    f"key ({len(stored)} bytes: neither {SEED_BYTES} bytes "
                                    "nor a sealed key)")
        if stored.startswith(PLAINTEXT_TAG):
            seed, unsealed = stored[len(PLAINTEXT_TAG):], True
        else:
            try:
                seed, unsealed = self._box.open(stored), False
            except SecretBoxError as exc:
                raise StoreError(f"policy store {self._where!r}: cannot open the signing "
                                 f"key: {exc}") from None
        if len(seed) != SEED_BYTES:
            raise CorruptStoreError(f"policy store {self._where!r} holds a malformed signing "
                                    f"key (expected {SEED_BYTES} bytes)")
        return seed, unsealed

    def registrations(self) -> dict[str, list[str]]:
        """The in-proxy endpoints registered when the set last changed (before a restart,
        for a restarted Center), service -> sorted addresses."""
        with self._locked():
            rows = self._db.execute(
                "SELECT service, address FROM registrations ORDER BY service, address"
            ).fetchall()
        registered: dict[str, list[str]] = {}
        for service, address in rows:
            registered.setdefault(str(service), []).append(str(address))
        return registered

    def save_registrations(self, registered: Mapping[str, Sequence[str]]) -> None:
        """Replaces the saved set; called when it changes (not on lease renewals)."""
        with self._locked(), self._write_transaction():
            self._db.execute("DELETE FROM registrations")
            self._db.executemany(
                "INSERT INTO registrations (service, address) VALUES (?, ?)",
                [(service, address) for service, addresses in registered.items()
                 for address in addresses])

    def follow(self, listener: StoreListener) -> None:
        """Nothing to follow: one Center owns the file, and it publishes its own changes."""

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    # -- internals ---------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            if self._closed:
                raise StoreError(f"policy store {self._where!r} is closed")
            yield

    @contextmanager
    def _write_transaction(self) -> Iterator[None]:
        # IMMEDIATE takes the write lock up front: whatever is read inside (the latest revision)
        # cannot change before the write, even with another process on the same file.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            # SQLite may already have rolled back on some errors; a second ROLLBACK would
            # hide the original exception.
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _create_schema(self) -> None:
        with self._write_transaction():
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"policy store {self._where!r} has schema version {version}, newer than "
                    f"this Center understands ({SCHEMA_VERSION})"
                )
            for migration in _MIGRATIONS[version:]:
                for statement in migration.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
            if version != SCHEMA_VERSION:
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _insert_audit(self, action: AuditAction, actor: str, peer: str, revision: int,
                      detail: str) -> AuditEvent:
        """Inside a write transaction the caller holds."""
        if revision < 0:
            raise ValueError(f"audit revision must be >= 0, got {revision}")
        values = (self._clock(), actor, peer, AuditAction(action).value, revision,
                  _clip(detail, MAX_DETAIL_CHARS))
        cursor = self._db.execute(
            "INSERT INTO audit_events (time_unix, actor, peer, action, revision, detail) "
            "VALUES (?, ?, ?, ?, ?, ?)", values,
        )
        event_id = cursor.lastrowid
        assert event_id is not None
        return AuditEvent(event_id, values[0], actor, peer, AuditAction(action), revision,
                          values[5])

    def _audit_event_of(self, row: tuple[object, ...]) -> AuditEvent:
        event_id, time_unix, actor, peer, action, revision, detail = row
        if (
            not isinstance(event_id, int)
            or not isinstance(time_unix, int | float)
            or not isinstance(actor, str)
            or not isinstance(peer, str)
            or action not in set(AuditAction)
            or not isinstance(revision, int)
            or not isinstance(detail, str)
        ):
            raise CorruptStoreError(
                f"policy store {self._where!r}: audit event {event_id!r} has malformed columns"
            )
        return AuditEvent(event_id, float(time_unix), actor, peer, AuditAction(str(action)),
                          revision, detail)

    def _revision_of(self, row: tuple[object, ...]) -> Revision:
        number, created, author, comment, stored_hash, yaml, rolled_back_from = row
        if (
            not isinstance(number, int)
            or not isinstance(created, int | float)
            or not isinstance(author, str)
            or not isinstance(comment, str)
            or not isinstance(stored_hash, str)
            or not isinstance(yaml, str)
            or not isinstance(rolled_back_from, int)
        ):
            raise CorruptStoreError(
                f"policy store {self._where!r}: revision {number!r} has malformed columns"
            )
        if content_hash_of(yaml) != stored_hash:
            raise CorruptStoreError(
                f"policy store {self._where!r}: revision {number} is corrupt "
                "(its stored hash does not match its YAML)"
            )
        return Revision(
            revision=number,
            created_unix=float(created),
            author=author,
            comment=comment,
            content_hash=stored_hash,
            yaml=yaml,
            rolled_back_from=rolled_back_from,
        )


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class MemoryStore(SqliteStore):
    """`memory://`: the same store on an in-memory database; nothing outlives the object."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(":memory:", clock=clock)
