"""The Center's policy store: revisions, history, rollback, durability and the signing key.

The behaviour every backend shares runs against each of them (`backend`: memory://, a SQLite
file, etcd on loopback); tests of one backend's own ways (SQLite's files and schema, etcd's
URLs, leases and reachability) name it.
"""

from __future__ import annotations

import hashlib
import os
import random
import select
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from support.etcd import EtcdCluster, unique_prefix

from center_svc import store as store_module
from center_svc.etcd_client import EtcdClient
from center_svc.etcd_store import EtcdStore, parse_etcd_url
from center_svc.kek import Kek, KekRing, blob_key_id
from center_svc.secretbox import PLAINTEXT_BOX, KekBox, SecretBoxError
from center_svc.store import (
    DEFAULT_STORE_URL,
    AuditAction,
    CorruptStoreError,
    MemoryStore,
    PolicyStore,
    SqliteStore,
    StoreError,
    StoreOptions,
    StoreUnavailableError,
    content_hash_of,
    open_store,
    sqlite_path_of,
)
from fastproxy.etcd import rpc_pb2 as etcd
from fastproxy.etcd import rpc_pb2_grpc as etcd_grpc

POLICY_A = "services:\n  billing: {}\n"
POLICY_B = "services:\n  billing: {}\n  orders: {}\n"
POLICY_C = "services:\n  orders: {}\n"


class Backend:
    """Opens stores of one backend; `open()` again reaches the same data, except memory://."""

    def __init__(self, name: str, tmp_path: Path, cluster: EtcdCluster | None) -> None:
        self.name = name
        self._path = tmp_path / "center.db"
        self._cluster = cluster
        self._prefix = "/" + unique_prefix("store") + "/"
        self.opened: list[PolicyStore] = []

    def open(self, clock: Callable[[], float] = time.time) -> PolicyStore:
        opened: PolicyStore
        if self.name == "memory":
            opened = MemoryStore(clock=clock)
        elif self.name == "sqlite":
            opened = SqliteStore(str(self._path), clock=clock)
        else:
            assert self._cluster is not None
            opened = EtcdStore(EtcdClient(self._cluster.endpoints), self._prefix,
                               where=self._cluster.url(self._prefix.strip("/")),
                               secret_box=PLAINTEXT_BOX, clock=clock)
        self.opened.append(opened)
        return opened

    def close_all(self) -> None:
        for opened in self.opened:
            opened.close()


def _opened_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    cluster = request.getfixturevalue("etcd_cluster") if request.param == "etcd" else None
    opened = Backend(request.param, tmp_path, cluster)
    yield opened
    opened.close_all()


@pytest.fixture(params=["memory", "sqlite", "etcd"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from _opened_backend(request, tmp_path)


@pytest.fixture(params=["sqlite", "etcd"])
def shared_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A backend that two stores (two Centers) can open at once."""
    yield from _opened_backend(request, tmp_path)


@pytest.fixture
def store(backend: Backend) -> PolicyStore:
    return backend.open()


def file_url(path: Path) -> str:
    return "sqlite:///" + str(path)  # an absolute path gives the four-slash form


# -- revisions -------------------------------------------------------------------------------


def test_an_empty_store_has_no_revisions(store: PolicyStore) -> None:
    assert store.latest() is None
    assert store.get(1) is None
    assert store.history() == []


def test_revisions_start_at_one_and_grow_by_one(store: PolicyStore) -> None:
    numbers = [store.append(text, "alice", "c").revision.revision
               for text in (POLICY_A, POLICY_B, POLICY_C)]
    assert numbers == [1, 2, 3]
    latest = store.latest()
    assert latest is not None and latest.revision == 3


def test_a_revision_records_who_when_why_and_what(backend: Backend) -> None:
    store = backend.open(clock=lambda: 1234.5)
    result = store.append(POLICY_A, "alice", "first policy")
    assert result.applied
    stored = store.get(1)
    assert stored == result.revision
    assert stored is not None
    assert stored.created_unix == 1234.5
    assert stored.author == "alice"
    assert stored.comment == "first policy"
    assert stored.yaml == POLICY_A
    assert stored.content_hash == hashlib.sha256(POLICY_A.encode("utf-8")).hexdigest()
    assert stored.rolled_back_from == 0


def test_content_hash_is_sha256_hex_of_utf8() -> None:
    text = "name: caf\u00e9\n"
    assert content_hash_of(text) == hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_the_default_clock_is_unix_time(store: PolicyStore) -> None:
    before = time.time()
    created = store.append(POLICY_A, "alice", "").revision.created_unix
    assert before <= created <= time.time()


def test_identical_content_is_a_no_op_returning_the_latest(store: PolicyStore) -> None:
    first = store.append(POLICY_A, "alice", "first").revision
    again = store.append(POLICY_A, "bob", "same again")
    assert not again.applied
    assert again.revision == first
    assert [r.revision for r in store.history()] == [1]


def test_content_equal_to_an_older_revision_is_a_new_revision(store: PolicyStore) -> None:
    store.append(POLICY_A, "alice", "")
    store.append(POLICY_B, "alice", "")
    result = store.append(POLICY_A, "alice", "back to A by hand")
    assert result.applied and result.revision.revision == 3


def test_whitespace_change_is_a_different_content(store: PolicyStore) -> None:
    store.append(POLICY_A, "alice", "")
    assert store.append(POLICY_A + "\n", "alice", "").applied


# -- history ---------------------------------------------------------------------------------


def test_history_lists_newest_first(store: PolicyStore) -> None:
    for text in (POLICY_A, POLICY_B, POLICY_C):
        store.append(text, "alice", "")
    assert [r.revision for r in store.history()] == [3, 2, 1]
    assert [r.yaml for r in store.history()] == [POLICY_C, POLICY_B, POLICY_A]


def test_history_limit_keeps_the_newest(store: PolicyStore) -> None:
    for text in (POLICY_A, POLICY_B, POLICY_C):
        store.append(text, "alice", "")
    assert [r.revision for r in store.history(limit=2)] == [3, 2]
    assert [r.revision for r in store.history(limit=10)] == [3, 2, 1]
    assert store.history(limit=0) == []


def test_history_refuses_a_negative_limit(store: PolicyStore) -> None:
    with pytest.raises(ValueError, match="limit"):
        store.history(limit=-1)


# -- rollback --------------------------------------------------------------------------------


def test_rollback_is_a_new_revision_with_the_old_content(store: PolicyStore) -> None:
    store.append(POLICY_A, "alice", "")
    store.append(POLICY_B, "alice", "")
    old = store.get(1)
    assert old is not None
    result = store.append(old.yaml, "bob", "roll back to 1", rolled_back_from=1)
    assert result.applied
    assert result.revision.revision == 3
    assert result.revision.yaml == POLICY_A
    assert result.revision.content_hash == old.content_hash
    assert result.revision.rolled_back_from == 1
    assert result.revision.author == "bob"
    # the revisions rolled back over stay in the history
    assert [r.revision for r in store.history()] == [3, 2, 1]


def test_rollback_to_content_equal_to_latest_is_a_no_op(store: PolicyStore) -> None:
    store.append(POLICY_A, "alice", "")
    store.append(POLICY_B, "alice", "")
    store.append(POLICY_A, "alice", "", rolled_back_from=1)
    result = store.append(POLICY_A, "bob", "roll back to 1 again", rolled_back_from=1)
    assert not result.applied
    assert result.revision.revision == 3


def test_rollback_from_a_revision_that_does_not_exist_is_refused(store: PolicyStore) -> None:
    store.append(POLICY_A, "alice", "")
    with pytest.raises(ValueError, match="roll back"):
        store.append(POLICY_B, "alice", "", rolled_back_from=5)
    with pytest.raises(ValueError):
        store.append(POLICY_B, "alice", "", rolled_back_from=-1)
    assert [r.revision for r in store.history()] == [1]


# -- URLs ------------------------------------------------------------------------------------


def test_url_three_slashes_is_a_relative_path() -> None:
    assert sqlite_path_of("sqlite:///relative/path.db") == "relative/path.db"


def test_url_four_slashes_is_an_absolute_path() -> None:
    assert sqlite_path_of("sqlite:////absolute/path.db") == "/absolute/path.db"


def test_url_memory_names_no_file() -> None:
    assert sqlite_path_of("memory://") is None
    assert isinstance(open_store("memory://"), MemoryStore)


def test_default_url_is_a_file_in_the_current_folder() -> None:
    assert sqlite_path_of(DEFAULT_STORE_URL) == "fastproxy-center.db"


@pytest.mark.parametrize(
    "url",
    ["postgresql://db/center", "sqlite://", "sqlite:///", "sqlite:////", "memory:", "",
     "center.db", "sqlite:/center.db", "sqlite:///center.db?mode=ro", "memory://x"],
)
def test_other_urls_are_refused_naming_the_expected_forms(url: str) -> None:
    with pytest.raises(ValueError, match=r"sqlite:///relative/path\.db.*memory://"):
        open_store(url)


def test_a_relative_url_is_relative_to_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///center.db")
    store.append(POLICY_A, "alice", "")
    store.close()
    assert (tmp_path / "center.db").is_file()


def test_an_absolute_url_opens_that_file(tmp_path: Path) -> None:
    url = "sqlite:///" + str(tmp_path / "abs.db")
    assert url.startswith("sqlite:////")
    store = open_store(url)
    assert isinstance(store, SqliteStore)
    store.close()
    assert (tmp_path / "abs.db").is_file()


def test_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder" / "center.db"
    with pytest.raises(StoreError, match="does not exist"):
        open_store(file_url(missing))
    assert not missing.parent.exists()


# -- durability ------------------------------------------------------------------------------


def test_history_survives_close_and_reopen(shared_backend: Backend) -> None:
    store = shared_backend.open()
    store.append(POLICY_A, "alice", "one")
    store.append(POLICY_B, "bob", "two")
    store.append(POLICY_A, "carol", "three", rolled_back_from=1)
    before = store.history()
    store.close()

    reopened = shared_backend.open()
    assert reopened.history() == before
    assert reopened.append(POLICY_C, "dave", "four").revision.revision == 4


def test_memory_store_keeps_nothing() -> None:
    first = open_store("memory://")
    first.append(POLICY_A, "alice", "")
    first.close()
    second = open_store("memory://")
    assert second.latest() is None
    second.close()


def test_the_store_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "center.db"
    store = open_store(file_url(path))
    store.append(POLICY_A, "alice", "")
    store.signing_key_seed()
    for name in ("center.db", "center.db-wal", "center.db-shm"):
        if (tmp_path / name).exists():
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    store.close()


def test_the_file_uses_wal_and_full_sync(tmp_path: Path) -> None:
    path = tmp_path / "center.db"
    store = open_store(file_url(path))
    store.close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_two_stores_on_one_place_never_reuse_a_revision(shared_backend: Backend) -> None:
    one, two = shared_backend.open(), shared_backend.open()
    assert one.append(POLICY_A, "a", "").revision.revision == 1
    assert two.append(POLICY_B, "b", "").revision.revision == 2
    assert one.append(POLICY_C, "a", "").revision.revision == 3
    assert not two.append(POLICY_C, "b", "").applied


def test_concurrent_appends_through_two_stores_get_distinct_revisions(
        shared_backend: Backend) -> None:
    """Two Centers (two stores on one file or one etcd prefix), two writer threads each: no
    revision lost, none used twice, and both see one history."""
    stores = [shared_backend.open(), shared_backend.open()]
    numbers: list[int] = []
    numbers_lock = threading.Lock()

    def writer(store: PolicyStore, name: str) -> None:
        for i in range(10):
            number = store.append(f"writer: {name}\nindex: {i}\n", name, "").revision.revision
            with numbers_lock:
                numbers.append(number)

    threads = [threading.Thread(target=writer, args=(stores[n % 2], f"w{n}"))
               for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(numbers) == list(range(1, 41))
    assert stores[0].history() == stores[1].history()
    assert [e.revision for e in stores[0].audit_events()] == list(range(40, 0, -1))


def test_a_closed_store_refuses_calls(backend: Backend) -> None:
    store = backend.open()
    store.close()
    store.close()  # closing twice is harmless
    with pytest.raises(StoreError, match="closed"):
        store.latest()
    with pytest.raises(StoreError, match="closed"):
        store.append(POLICY_A, "alice", "")


# -- corruption ------------------------------------------------------------------------------


def test_a_corrupt_latest_revision_is_detected_on_open(tmp_path: Path) -> None:
    path = tmp_path / "center.db"
    store = open_store(file_url(path))
    store.append(POLICY_A, "alice", "")
    store.append(POLICY_B, "alice", "")
    store.close()
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE revisions SET yaml = ? WHERE revision = 2", (POLICY_C,))
    with pytest.raises(CorruptStoreError, match="revision 2 is corrupt"):
        open_store(file_url(path))


def test_a_corrupt_older_revision_is_refused_when_read(tmp_path: Path) -> None:
    path = tmp_path / "center.db"
    store = open_store(file_url(path))
    store.append(POLICY_A, "alice", "")
    store.append(POLICY_B, "alice", "")
    store.close()
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE revisions SET content_hash = ? WHERE revision = 1", ("0" * 64,))
    reopened = open_store(file_url(path))  # the latest is fine
    with pytest.raises(CorruptStoreError, match="revision 1"):
        reopened.get(1)
    with pytest.raises(CorruptStoreError):
        reopened.history()
    reopened.close()


def test_a_file_that_is_not_a_database_is_detected_on_open(tmp_path: Path) -> None:
    path = tmp_path / "center.db"
    path.write_bytes(b"this is not a sqlite database, just some bytes" * 100)
    with pytest.raises(CorruptStoreError, match="not a readable database"):
        open_store(file_url(path))


def test_a_malformed_signing_key_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "center.db"
    open_store(file_url(path)).close()
    with sqlite3.connect(path) as raw:
        raw.execute("INSERT INTO signing_key (id, seed) VALUES (1, ?)", (b"short",))
    store = open_store(file_url(path))
    with pytest.raises(CorruptStoreError, match="signing key"):
        store.signing_key_seed()
    store.close()


# -- signing key -----------------------------------------------------------------------------


def test_signing_key_seed_is_a_usable_ed25519_seed(store: PolicyStore) -> None:
    seed = store.signing_key_seed()
    assert len(seed) == 32
    key = Ed25519PrivateKey.from_private_bytes(seed)
    key.public_key().verify(key.sign(b"snapshot"), b"snapshot")


def test_signing_key_seed_is_created_once_per_memory_store() -> None:
    one, two = MemoryStore(), MemoryStore()
    assert one.signing_key_seed() == one.signing_key_seed()
    assert one.signing_key_seed() != two.signing_key_seed()
    one.close()
    two.close()


def test_signing_key_seed_survives_close_and_reopen(tmp_path: Path) -> None:
    url = file_url(tmp_path / "center.db")
    store = open_store(url)
    seed = store.signing_key_seed()
    store.close()
    reopened = open_store(url)
    assert reopened.signing_key_seed() == seed
    reopened.close()


def test_two_stores_on_one_place_share_one_signing_key(shared_backend: Backend) -> None:
    one, two = shared_backend.open(), shared_backend.open()
    assert one.signing_key_seed() == two.signing_key_seed()
    assert shared_backend.open().signing_key_seed() == one.signing_key_seed()


# -- SIGKILL in the middle of appends --------------------------------------------------------

_APPENDER = textwrap.dedent(
    """
    import sys
    from center_svc.store import open_store

    store = open_store(sys.argv[1])
    round_id = sys.argv[2]
    # big enough that one revision spans many database pages
    padding = "# " + "x" * 200 + "\\n"
    print("ready", flush=True)
    i = 0
    while True:
        store.append(f"round: {round_id}\\nindex: {i}\\n" + padding * 25, "child", str(i))
        i += 1
    """
)


def wait_for_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "child did not start in time"
    return proc.stdout.readline()


def test_sigkill_during_appends_leaves_only_whole_revisions(tmp_path: Path) -> None:
    url = file_url(tmp_path / "center.db")
    store = open_store(url)
    seed = store.signing_key_seed()
    store.append(POLICY_A, "parent", "before the children")
    store.close()

    rng = random.Random()
    counts = [1]
    for round_id in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-c", _APPENDER, url, str(round_id)],
            stdout=subprocess.PIPE,
        )
        try:
            assert wait_for_line(proc, timeout=10) == b"ready\n"
            time.sleep(rng.uniform(0.1, 0.5))
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=10) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            assert proc.stdout is not None
            proc.stdout.close()

        reopened = open_store(url)  # raises if the latest row is broken
        history = reopened.history()
        assert [r.revision for r in history] == list(range(len(history), 0, -1))
        for revision in history:
            assert revision.content_hash == content_hash_of(revision.yaml)
        assert reopened.signing_key_seed() == seed
        after = reopened.append(f"parent: after round {round_id}\n", "parent", "")
        assert after.applied and after.revision.revision == len(history) + 1
        reopened.close()
        counts.append(len(history))

    assert counts == sorted(counts)
    assert counts[-1] > counts[0], "no child ever committed a revision"


# -- audit events ----------------------------------------------------------------------------


def test_an_apply_is_an_audit_event_naming_actor_peer_and_revision(backend: Backend) -> None:
    store = backend.open(clock=lambda: 99.5)
    store.append(POLICY_A, "admin:alice", "first", peer="ipv4:127.0.0.1:5000")
    (event,) = store.audit_events()
    assert (event.time_unix, event.actor, event.peer, event.action, event.revision) == (
        99.5, "admin:alice", "ipv4:127.0.0.1:5000", AuditAction.APPLY, 1)
    assert event.detail == "applied as revision 1"


def test_an_unchanged_apply_is_audited_with_the_revision_it_matched(
        store: PolicyStore) -> None:
    store.append(POLICY_A, "admin:alice", "")
    store.append(POLICY_A, "admin:bob", "again")
    newest = store.audit_events()[0]
    assert (newest.actor, newest.action, newest.revision) == ("admin:bob", AuditAction.APPLY, 1)
    assert newest.detail == "unchanged: identical to revision 1"


def test_a_rollback_is_audited_as_a_rollback(store: PolicyStore) -> None:
    store.append(POLICY_A, "admin:alice", "")
    store.append(POLICY_B, "admin:alice", "")
    store.append(POLICY_A, "admin:bob", "undo", rolled_back_from=1)
    newest = store.audit_events()[0]
    assert (newest.actor, newest.action, newest.revision) == (
        "admin:bob", AuditAction.ROLLBACK, 3)
    assert newest.detail == "rolled back to revision 1 as revision 3"


def test_refusals_are_recorded_on_their_own_and_listed_newest_first(
        store: PolicyStore) -> None:
    store.append(POLICY_A, "file:/etc/p.yaml", "")
    refused = store.record_audit(AuditAction.REFUSED_APPLY, "admin:alice",
                                 "services.a.identity: unknown key 'x'", peer="ipv4:1.2.3.4:5")
    store.record_audit(AuditAction.DENIED, "anonymous", "UNAUTHENTICATED on ApplyPolicy",
                       peer="ipv4:1.2.3.4:6")
    events = store.audit_events()
    assert [e.action for e in events] == [AuditAction.DENIED, AuditAction.REFUSED_APPLY,
                                          AuditAction.APPLY]
    assert events[1] == refused
    assert [e.id for e in events] == sorted((e.id for e in events), reverse=True)
    assert [e.action for e in store.audit_events(limit=1)] == [AuditAction.DENIED]
    assert store.audit_events(limit=0) == []
    assert store.history() == store.history(limit=1)  # a refusal makes no revision


def test_an_append_that_fails_leaves_no_audit_event(store: PolicyStore) -> None:
    store.append(POLICY_A, "admin:alice", "")
    with pytest.raises(ValueError, match="roll back"):
        store.append(POLICY_B, "admin:alice", "", rolled_back_from=7)
    assert [e.revision for e in store.audit_events()] == [1]


def test_audit_events_never_hold_the_policy_text(store: PolicyStore) -> None:
    secret_policy = "keys:\n  k: {type: hmac-sha256, secret: 'base64:c2VjcmV0c2VjcmV0'}\n"
    store.append(secret_policy, "admin:alice", "")
    store.append(secret_policy, "admin:alice", "")
    assert all("c2VjcmV0" not in repr(e) for e in store.audit_events())


def test_only_the_newest_denied_events_are_kept(
        store: PolicyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "MAX_DENIED_EVENTS", 3)
    store.append(POLICY_A, "admin:alice", "")
    for number in range(6):
        store.record_audit(AuditAction.DENIED, "anonymous", f"attempt {number}")
    events = store.audit_events()
    assert [e.detail for e in events if e.action is AuditAction.DENIED] == [
        "attempt 5", "attempt 4", "attempt 3"]
    assert [e.action for e in events][-1] is AuditAction.APPLY  # changes are never pruned


def test_a_long_detail_is_cut(store: PolicyStore) -> None:
    event = store.record_audit(AuditAction.REFUSED_APPLY, "admin:a", "x" * 10_000)
    assert len(event.detail) == store_module.MAX_DETAIL_CHARS
    assert store.audit_events()[0].detail == event.detail


def test_audit_events_survive_close_and_reopen(shared_backend: Backend) -> None:
    first = shared_backend.open()
    first.append(POLICY_A, "admin:alice", "", peer="ipv4:127.0.0.1:1")
    first.record_audit(AuditAction.REFUSED_ROLLBACK, "admin:bob", "revision 9 does not exist",
                       revision=9)
    before = first.audit_events()
    first.close()
    assert shared_backend.open().audit_events() == before


# -- schema migration ------------------------------------------------------------------------

# The schema of version 1 as the first Centers wrote it, kept here verbatim so the migration
# is tested against what really exists on disk, not against today's code.
SCHEMA_V1 = """
CREATE TABLE revisions (
    revision         INTEGER PRIMARY KEY,
    created_unix     REAL    NOT NULL,
    author           TEXT    NOT NULL,
    comment          TEXT    NOT NULL,
    content_hash     TEXT    NOT NULL,
    yaml             TEXT    NOT NULL,
    rolled_back_from INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE signing_key (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seed BLOB    NOT NULL
);
PRAGMA user_version = 1;
"""


def make_v1_store(path: Path) -> bytes:
    """A version-1 store file with revisions 1 and 2 and a signing key; returns the seed."""
    seed = os.urandom(32)
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_V1)
    for number, text in ((1, POLICY_A), (2, POLICY_B)):
        db.execute("INSERT INTO revisions VALUES (?, ?, ?, ?, ?, ?, 0)",
                   (number, 1000.0 + number, "admin:old", f"r{number}", content_hash_of(text),
                    text))
    db.execute("INSERT INTO signing_key VALUES (1, ?)", (seed,))
    db.commit()
    db.close()
    return seed


def user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        version: int = db.execute("PRAGMA user_version").fetchone()[0]
        return version
    finally:
        db.close()


def test_a_version_1_file_is_migrated_keeping_revisions_and_key(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    seed = make_v1_store(path)
    store = open_store(file_url(path))
    assert [(r.revision, r.author, r.comment) for r in store.history()] == [
        (2, "admin:old", "r2"), (1, "admin:old", "r1")]
    assert store.signing_key_seed() == seed
    assert store.audit_events() == []
    result = store.append(POLICY_C, "admin:new", "after upgrade", peer="ipv4:127.0.0.1:9")
    assert result.revision.revision == 3
    assert [(e.actor, e.revision) for e in store.audit_events()] == [("admin:new", 3)]
    store.close()
    assert user_version(path) == store_module.SCHEMA_VERSION == 3
    reopened = open_store(file_url(path))  # opening a migrated file again changes nothing
    assert len(reopened.audit_events()) == 1
    reopened.close()


def test_a_newer_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    make_v1_store(path)
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 4")
    db.close()
    with pytest.raises(StoreError, match="schema version 4"):
        open_store(file_url(path))


def test_registrations_are_replaced_whole_and_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "center.db"
    store = open_store(file_url(path))
    assert store.registrations() == {}
    store.save_registrations({"song": ["10.0.0.2:9101", "10.0.0.1:9101"], "chat": ["c:1"]})
    store.save_registrations({"song": ["10.0.0.2:9101", "10.0.0.1:9101"]})
    store.close()
    reopened = open_store(file_url(path))
    assert reopened.registrations() == {"song": ["10.0.0.1:9101", "10.0.0.2:9101"]}
    reopened.close()


# -- etcd: URLs, the sealed signing key, registrations, following, reachability -------------


def test_etcd_urls_name_members_and_a_prefix() -> None:
    assert parse_etcd_url("etcd://10.0.0.1:2379,etcd-2:2379,[::1]:2379/fastproxy/prod") == (
        ("10.0.0.1:2379", "etcd-2:2379", "[::1]:2379"), "/fastproxy/prod/")
    assert parse_etcd_url("etcd://127.0.0.1:2379/fp/") == (("127.0.0.1:2379",), "/fp/")


@pytest.mark.parametrize(("url", "names"), [
    ("etcd://127.0.0.1:2379", "prefix"),
    ("etcd://127.0.0.1:2379/", "prefix"),
    ("etcd://127.0.0.1:2379/a b", "prefix"),
    ("etcd://127.0.0.1/fp", "HOST:PORT"),
    ("etcd://127.0.0.1:99999/fp", "HOST:PORT"),
    ("etcd://a:1,,b:2/fp", "HOST:PORT"),
    ("etcd://root:secret@127.0.0.1:2379/fp", "credentials do not go in the URL"),
])
def test_bad_etcd_urls_are_refused_naming_what_is_wrong(url: str, names: str) -> None:
    with pytest.raises(ValueError, match=names) as refused:
        open_store(url)
    assert "secret" not in str(refused.value)


class AesBox:
    """A SecretBox as the KEK's will be: AES-256-GCM under a key this process holds."""

    def __init__(self) -> None:
        self._aead = AESGCM(AESGCM.generate_key(bit_length=256))

    def seal(self, plaintext: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, b"signing-key")

    def open(self, sealed: bytes) -> bytes:
        try:
            return self._aead.decrypt(sealed[:12], sealed[12:], b"signing-key")
        except InvalidTag:
            raise SecretBoxError("sealed under another key") from None

    def stale(self, sealed: bytes) -> bool:
        return False


def etcd_store(cluster: EtcdCluster, prefix: str, **options: object) -> PolicyStore:
    return open_store(cluster.url(prefix), StoreOptions(**options))  # type: ignore[arg-type]


def raw_value(cluster: EtcdCluster, key: str) -> bytes:
    with cluster.client_channel() as ch:
        found = etcd_grpc.KVStub(ch).Range(etcd.RangeRequest(key=key.encode()), timeout=5).kvs
    return bytes(found[0].value) if found else b""


def raw_put(cluster: EtcdCluster, key: str, value: bytes) -> None:
    with cluster.client_channel() as ch:
        etcd_grpc.KVStub(ch).Put(etcd.PutRequest(key=key.encode(), value=value), timeout=5)


def test_the_etcd_signing_key_is_kept_sealed_by_the_secret_box(
        etcd_cluster: EtcdCluster) -> None:
    prefix, box = unique_prefix(), AesBox()
    store = etcd_store(etcd_cluster, prefix, secret_box=box)
    seed = store.signing_key_seed()
    sealed = raw_value(etcd_cluster, f"/{prefix}/signing-key")
    assert sealed and seed not in sealed
    assert box.open(sealed) == seed
    again = etcd_store(etcd_cluster, prefix, secret_box=box)
    assert again.signing_key_seed() == seed
    for wrong in (AesBox(), PLAINTEXT_BOX):
        other = etcd_store(etcd_cluster, prefix, secret_box=wrong)
        with pytest.raises(StoreError, match="cannot open the signing key"):
            other.signing_key_seed()
        other.close()
    store.close()
    again.close()


def test_development_mode_marks_the_etcd_signing_key_as_plaintext(
        etcd_cluster: EtcdCluster) -> None:
    prefix = unique_prefix()
    store = etcd_store(etcd_cluster, prefix)
    seed = store.signing_key_seed()
    assert raw_value(etcd_cluster, f"/{prefix}/signing-key") == \
        b"fastproxy-plaintext-v1:" + seed
    store.close()
    sealed_prefix = unique_prefix()
    etcd_store(etcd_cluster, sealed_prefix, secret_box=AesBox()).signing_key_seed()
    with pytest.raises(StoreError, match="start the Center with the same --kek"):
        etcd_store(etcd_cluster, sealed_prefix).signing_key_seed()


def sqlite_signing_row(path: Path) -> bytes:
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT seed FROM signing_key WHERE id = 1").fetchone()
    db.close()
    return bytes(row[0])


def test_the_sqlite_signing_key_is_kept_sealed_by_the_secret_box(tmp_path: Path) -> None:
    path, box = tmp_path / "center.db", AesBox()
    store = SqliteStore(str(path), secret_box=box)
    seed = store.signing_key_seed()
    store.close()
    sealed = sqlite_signing_row(path)
    assert box.open(sealed) == seed
    on_disk = b"".join(p.read_bytes() for p in tmp_path.glob("center.db*"))
    assert seed not in on_disk  # a copy of the file does not give the key away
    again = SqliteStore(str(path), secret_box=box)
    assert again.signing_key_seed() == seed
    again.close()
    for wrong in (AesBox(), PLAINTEXT_BOX):
        other = SqliteStore(str(path), secret_box=wrong)
        with pytest.raises(StoreError, match="cannot open the signing key"):
            other.signing_key_seed()
        other.close()
    assert sqlite_signing_row(path) == sealed  # a refused opening changes nothing


@pytest.mark.parametrize("unsealed", ["bare", "tagged"])
def test_a_sqlite_signing_key_stored_unsealed_is_sealed_in_place_once_a_kek_is_given(
        tmp_path: Path, unsealed: str, caplog: pytest.LogCaptureFixture) -> None:
    """A store written by an older Center (the bare 32 bytes) or in development mode (tagged
    plaintext) keeps its key, the one nodes pinned, and holds it sealed from then on."""
    path = tmp_path / "center.db"
    development = SqliteStore(str(path))
    seed = development.signing_key_seed()
    development.close()
    assert sqlite_signing_row(path) == b"fastproxy-plaintext-v1:" + seed
    if unsealed == "bare":
        with sqlite3.connect(path) as db:
            db.execute("UPDATE signing_key SET seed = ? WHERE id = 1", (seed,))
        db.close()
        plain = SqliteStore(str(path))  # development mode still reads it
        assert plain.signing_key_seed() == seed
        plain.close()
    box = AesBox()
    with caplog.at_level("WARNING", logger="center_svc.store"):
        sealing = SqliteStore(str(path), secret_box=box)
        assert sealing.signing_key_seed() == seed
        sealing.close()
    assert "is sealed with it now" in caplog.text
    assert box.open(sqlite_signing_row(path)) == seed
    without = SqliteStore(str(path))
    with pytest.raises(StoreError, match="start the Center with the same --kek"):
        without.signing_key_seed()
    without.close()


@pytest.mark.parametrize("backend_name", ["sqlite", "etcd"])
def test_a_signing_key_sealed_by_an_older_kek_is_sealed_again_with_the_first(
        backend_name: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """KEK rotation (`--kek NEW --kek OLD`): the store's signing key moves to NEW at start,
    so OLD can be dropped afterwards; the key itself is unchanged."""
    old, new = Kek(os.urandom(32)), Kek(os.urandom(32))
    if backend_name == "sqlite":
        path = tmp_path / "center.db"

        def opened(ring: KekRing) -> PolicyStore:
            return SqliteStore(str(path), secret_box=KekBox(ring))

        def row() -> bytes:
            return sqlite_signing_row(path)
    else:
        cluster: EtcdCluster = request.getfixturevalue("etcd_cluster")
        prefix = unique_prefix()

        def opened(ring: KekRing) -> PolicyStore:
            return etcd_store(cluster, prefix, secret_box=KekBox(ring))

        def row() -> bytes:
            return raw_value(cluster, f"/{prefix}/signing-key")

    def seed_with(ring: KekRing) -> bytes:
        store = opened(ring)
        try:
            return store.signing_key_seed()
        finally:
            store.close()

    seed = seed_with(KekRing([old]))
    assert blob_key_id(row()) == old.key_id
    assert seed_with(KekRing([new, old])) == seed
    assert blob_key_id(row()) == new.key_id
    assert seed_with(KekRing([new])) == seed  # OLD no longer needed
    with pytest.raises(StoreError, match=f"sealed with KEK {new.key_id}, which is not given"):
        seed_with(KekRing([old]))


def test_a_damaged_etcd_revision_is_refused(etcd_cluster: EtcdCluster) -> None:
    prefix = unique_prefix()
    store = etcd_store(etcd_cluster, prefix)
    store.append(POLICY_A, "alice", "")
    key = f"/{prefix}/revisions/{1:020d}"
    record = raw_value(etcd_cluster, key).replace(b"billing", b"billinG")
    raw_put(etcd_cluster, key, record)
    with pytest.raises(CorruptStoreError, match="revision 1 is corrupt"):
        store.get(1)
    raw_put(etcd_cluster, key, b"not json")
    with pytest.raises(CorruptStoreError, match="not a readable revision record"):
        etcd_store(etcd_cluster, prefix)
    store.close()


class Heard:
    """A StoreListener that keeps what it was told."""

    def __init__(self) -> None:
        self.revisions: list[int] = []
        self.registered: list[dict[str, list[str]]] = [{}]
        self.reachable: list[bool] = []

    def revision_stored(self, revision: int) -> None:
        self.revisions.append(revision)

    def registrations_changed(self, registered: dict[str, list[str]]) -> None:
        self.registered.append(registered)

    def reachability_changed(self, reachable: bool, reason: str) -> None:
        self.reachable.append(reachable)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def test_a_following_etcd_store_hears_revisions_and_registrations_of_the_others(
        etcd_cluster: EtcdCluster) -> None:
    prefix = unique_prefix()
    replica_x, replica_y = etcd_store(etcd_cluster, prefix), etcd_store(etcd_cluster, prefix)
    heard = Heard()
    replica_y.follow(heard)
    replica_x.append(POLICY_A, "alice", "")
    replica_x.save_registrations({"song": ["10.0.0.1:9101"]})
    wait_for(lambda: 1 in heard.revisions, 5, "revision 1 through the other store")
    wait_for(lambda: heard.registered[-1] == {"song": ["10.0.0.1:9101"]}, 5,
             "the registration through the other store")
    assert replica_y.registrations() == {"song": ["10.0.0.1:9101"]}
    replica_x.save_registrations({})
    wait_for(lambda: heard.registered[-1] == {}, 5, "the registration to go")
    replica_x.close()
    replica_y.close()


def test_a_replica_deletes_no_registration_another_replica_took_over(
        etcd_cluster: EtcdCluster) -> None:
    """The node moved from X to Y: X letting go of its stream must not remove the endpoint
    Y now holds."""
    prefix = unique_prefix()
    replica_x, replica_y = etcd_store(etcd_cluster, prefix), etcd_store(etcd_cluster, prefix)
    replica_x.save_registrations({"song": ["10.0.0.1:9101"]})
    wait_for(lambda: replica_y.registrations() == {"song": ["10.0.0.1:9101"]}, 5, "X's put")
    replica_y.save_registrations({"song": ["10.0.0.1:9101"]})
    time.sleep(0.3)  # Y's put lands; then X lets go
    replica_x.save_registrations({})
    time.sleep(0.5)
    assert replica_y.registrations() == {"song": ["10.0.0.1:9101"]}
    replica_x.close()
    replica_y.close()


def test_registrations_lapse_with_the_replica_that_made_them(
        etcd_cluster: EtcdCluster) -> None:
    prefix = unique_prefix()
    dying = etcd_store(etcd_cluster, prefix, registration_ttl_s=1)
    watching = etcd_store(etcd_cluster, prefix)
    dying.save_registrations({"song": ["10.0.0.1:9101"]})
    wait_for(lambda: watching.registrations() == {"song": ["10.0.0.1:9101"]}, 5, "the put")
    dying.close()  # stops renewing its lease, as a killed replica does
    gone = time.monotonic()
    wait_for(lambda: watching.registrations() == {}, 5, "the lease to lapse")
    assert time.monotonic() - gone < 3.5  # a TTL of 1 s, plus etcd's lease check
    watching.close()


def test_an_unreachable_etcd_is_a_clear_error_in_bounded_time(
        etcd_cluster: EtcdCluster) -> None:
    prefix = unique_prefix()
    store = etcd_store(etcd_cluster, prefix)
    heard = Heard()
    store.follow(heard)
    etcd_cluster.pause(0)  # a member that hangs, as one cut off does
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="cannot reach etcd"):
            store.append(POLICY_A, "alice", "")
        assert time.monotonic() - started < 3 * 2.0 + 1
        wait_for(lambda: heard.reachable[-1:] == [False], 5, "the probe to notice")
    finally:
        etcd_cluster.resume(0)
    wait_for(lambda: heard.reachable[-1:] == [True], 10, "the probe to see etcd back")
    assert store.append(POLICY_A, "alice", "").applied
    store.close()


def test_opening_an_etcd_store_nobody_answers_fails_naming_it() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: refused
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match=rf"127\.0\.0\.1:{port}"):
            open_store(f"etcd://127.0.0.1:{port}/fp", StoreOptions(open_timeout_s=0.5))
        assert time.monotonic() - started < 2.0
