"""Attacks on the Center's control plane (security.md, hardening points 1, 2, 3, 7 and 8).

Each test attacks one claimed property. A test that fails on the code names, in its
docstring, the claim it breaks; one that passes shows an attack refused as claimed, on ground
the other Center tests do not cover.
"""

from __future__ import annotations

import base64
import os
import queue
import sqlite3
import threading
import time
from pathlib import Path

import grpc
import pytest
from conftest import WATCH_METHOD, CenterProcess, StartCenter, wait_until
from support.center_policy import PolicyKeys, policy_yaml

from center_svc.kek import Kek, KekRing
from center_svc.secretbox import KekBox
from center_svc.store import SqliteStore
from fastproxy.policy import PolicyError, load_policy
from fastproxy.policy.redaction import redact_policy, secret_fields
from fastproxy.v1 import center_pb2, policy_pb2

IN, APP = policy_pb2.ROLE_IN, policy_pb2.ROLE_APP
OPS = "ops-token"


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def apply(center: CenterProcess, text: str) -> center_pb2.ApplyPolicyResponse:
    response: center_pb2.ApplyPolicyResponse = center.stub().ApplyPolicy(
        center_pb2.ApplyPolicyRequest(yaml=text), timeout=10, metadata=bearer(OPS))
    return response


def new_kek(path: Path) -> str:
    path.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    return f"file:{path}"


class SlowHello:
    """A WatchPolicy stream opened at once, whose hello is sent only when the test says."""

    def __init__(self, center: CenterProcess, token: str) -> None:
        self._requests: queue.Queue[center_pb2.WatchRequest | None] = queue.Queue()
        method = center.channel().stream_stream(
            WATCH_METHOD, request_serializer=center_pb2.WatchRequest.SerializeToString,
            response_deserializer=center_pb2.WatchResponse.FromString)
        self.call = method(iter(self._requests.get, None), metadata=bearer(token))

    def hello(self, node_id: str, role: int, service: str) -> None:
        self._requests.put(center_pb2.WatchRequest(hello=center_pb2.NodeHello(
            node_id=node_id, role=role, service=service)))

    def first(self, timeout: float) -> center_pb2.WatchResponse | grpc.StatusCode:
        """The first response, or the status the stream ended with (bounded by `timeout`)."""
        answers: queue.Queue[center_pb2.WatchResponse | grpc.StatusCode] = queue.Queue()

        def read() -> None:
            try:
                for response in self.call:
                    answers.put(response)
                    return
                answers.put(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                answers.put(exc.code())

        threading.Thread(target=read, daemon=True).start()
        try:
            return answers.get(timeout=timeout)
        finally:
            self.call.cancel()
            self._requests.put(None)


# -- point 3: a revoked token ----------------------------------------------------------------


@pytest.fixture
def tokens(tmp_path: Path) -> tuple[Path, list[str]]:
    nodes = tmp_path / "node-tokens"
    nodes.write_text("song_service[in]: song-token\n")
    admins = tmp_path / "admin-tokens"
    admins.write_text(f"ops: {OPS}\nroot[read-secrets]: root-token\n")
    return nodes, ["--node-tokens", str(nodes), "--admin-tokens", str(admins)]


def test_a_token_revoked_while_its_stream_waits_to_say_hello_gets_no_snapshot(
        start_center: StartCenter, tokens: tuple[Path, list[str]]) -> None:
    """VIOLATES point 3 ("a removed token ... ends that stream"; reference: "a Watch stream
    whose token was removed ... ends with UNAUTHENTICATED"). The Center identifies a watch when
    the stream opens, but registers it (where a token-file reload looks for streams to end)
    only once the hello came, up to 10 s later. A holder of a token about to be revoked opens
    the stream, waits for the revocation, then says hello: it is taken with the old
    principal, is sent the in-node's keys, and is never rechecked."""
    nodes, flags = tokens
    center = start_center(*flags, "--policy-poll", "0.1")
    assert apply(center, policy_yaml(PolicyKeys())).applied
    stream = SlowHello(center, "song-token")
    time.sleep(0.5)  # the Center takes the call (and identifies it) as it opens
    nodes.write_text("song_service[in]: a-new-song-token\n")  # song-token revoked
    wait_until(lambda: "token files reloaded" in center.log(), 10, what="the reload")
    stream.hello("song-1", IN, "song_service")
    first = stream.first(timeout=5)
    assert not isinstance(first, center_pb2.WatchResponse), (
        "a stream opened with a revoked token was sent the in-node's snapshot: "
        f"{len(first.snapshot.snapshot)} bytes of revision "
        f"{policy_pb2.PolicySnapshot.FromString(first.snapshot.snapshot).revision}")
    assert first == grpc.StatusCode.UNAUTHENTICATED


def test_a_refused_watch_cannot_write_lines_of_its_own_into_the_centers_log(
        start_center: StartCenter, tmp_path: Path) -> None:
    """VIOLATES point 3 ("every refused credential is logged with the peer and the reason").
    A watch refused PERMISSION_DENIED (an app's token asking for the in-role) is logged with
    the hello's node id and service as sent, line breaks included (the UNAUTHENTICATED path
    cleans the node id, this one does not), so the refused caller writes a forged line: here
    one that puts the refusal on another peer and says the token was unknown."""
    nodes = tmp_path / "node-tokens"
    nodes.write_text("chat_service[app]: chat-app-token\n")
    center = start_center("--node-tokens", str(nodes))
    forged = ("FORGED center_svc.watch: watch refused from ipv4:10.6.6.6:1234 (node x): "
              "unknown token")
    for node_id, service in ((f"app-1\n{forged}", "chat_service"),
                             ("app-2", f"chat_service\n{forged}")):
        watch = center.watch(bearer("chat-app-token")).hello(node_id, IN, service)
        # (fixed: a node id or service that is not printable text is refused as such)
        assert watch.final_code() == grpc.StatusCode.INVALID_ARGUMENT
        assert watch.error is not None and "printable" in (watch.error.details() or "")
    lines = center.log().splitlines()
    assert not [line for line in lines if line.startswith("FORGED")], \
        "the refused caller's hello wrote a line of its own into the Center's log"


# -- point 8: KEK rotation -------------------------------------------------------------------


def test_the_documented_kek_rotation_lets_the_old_kek_be_dropped(
        start_center: StartCenter, tokens: tuple[Path, list[str]], tmp_path: Path) -> None:
    """VIOLATES reference.md (--kek: "rotation: `--kek file:NEW --kek file:OLD`, which
    re-seals the signing key with NEW at start, then apply again, which re-seals the policy's
    secrets; OLD may then be dropped"). Applying again re-seals nothing: a secret unchanged
    since the latest revision keeps its sealed form, the one OLD made, whichever KEK comes
    first (and the same policy is "unchanged", no revision at all). Dropping OLD as told then
    stops the Center: `stored revision N: keys...: sealed with KEK OLD, which is not given`."""
    _, flags = tokens
    store = f"sqlite:///{tmp_path / 'center.db'}"
    old, new = new_kek(tmp_path / "old-kek"), new_kek(tmp_path / "new-kek")
    keys = PolicyKeys()
    first = start_center(*flags, "--kek", old, store=store)
    assert apply(first, policy_yaml(keys)).applied
    assert first.terminate() == 0

    rotating = start_center(*flags, "--kek", new, "--kek", old, store=store)
    # "then apply again": fixed, the same document is stored once more, sealed with NEW
    assert apply(rotating, policy_yaml(keys)).applied
    assert apply(rotating, policy_yaml(keys, song_timeout_ms=2500)).applied  # and a change
    assert rotating.terminate() == 0

    dropped = start_center(*flags, "--kek", new, store=store)  # "OLD may then be dropped"
    revision = dropped.stub().GetCenterInfo(center_pb2.GetCenterInfoRequest(),
                                            timeout=5).latest_revision
    assert revision == 3


def test_history_stays_listable_once_an_old_kek_is_dropped(
        start_center: StartCenter, tokens: tuple[Path, list[str]], tmp_path: Path) -> None:
    """VIOLATES reference.md ("OLD may then be dropped") and "bad input gets a clear error;
    nothing is lost". Even where every secret changed under `--kek NEW --kek OLD` (so the
    latest revision is sealed with NEW and the Center starts with NEW alone), the older
    revisions stay sealed with OLD, and the Center opens every revision to list the history:
    `policy history` (ListRevisions, which returns no policy text) fails with UNKNOWN
    instead of listing, and an older revision's GetPolicy fails with UNKNOWN, not a
    message naming the KEK it needs."""
    _, flags = tokens
    store = f"sqlite:///{tmp_path / 'center.db'}"
    old, new = new_kek(tmp_path / "old-kek"), new_kek(tmp_path / "new-kek")
    first = start_center(*flags, "--kek", old, store=store)
    assert apply(first, policy_yaml(PolicyKeys())).applied
    assert first.terminate() == 0
    rotating = start_center(*flags, "--kek", new, "--kek", old, store=store)
    assert apply(rotating, policy_yaml(PolicyKeys())).applied  # every secret new
    assert rotating.terminate() == 0

    dropped = start_center(*flags, "--kek", new, store=store)
    stub = dropped.stub()
    try:
        listed = stub.ListRevisions(center_pb2.ListRevisionsRequest(), timeout=5,
                                    metadata=bearer(OPS))
    except grpc.RpcError as exc:
        pytest.fail(f"ListRevisions failed once OLD was dropped: {exc.code().name} "
                    f"{exc.details()}")
    assert [r.revision for r in listed.revisions] == [2, 1]
    with pytest.raises(grpc.RpcError) as older:
        stub.GetPolicy(center_pb2.GetPolicyRequest(revision=1), timeout=5,
                       metadata=bearer(OPS))
    assert older.value.code() != grpc.StatusCode.UNKNOWN
    assert "sealed with KEK" in (older.value.details() or "")


# -- point 8: a secret written once and aliased ----------------------------------------------


def aliased_policy() -> str:
    """A valid policy whose two keys share one secret, written once (a YAML anchor) and
    aliased: the loader takes it, both keys hold the secret."""
    secret = "base64:" + base64.b64encode(os.urandom(32)).decode()
    return ("version: 1\nkeys:\n"
            f'  a: {{type: aes-256-gcm, secret: &shared "{secret}"}}\n'
            "  b: {type: aes-256-gcm, secret: *shared}\n"
            "services:\n"
            "  song_service:\n    grpc_services: [demo.v1.Echo]\n    encrypt: {key: a}\n"
            "  chat_service:\n    grpc_services: [demo.v1.Chat]\n    encrypt: {key: b}\n")


def test_a_policy_with_an_aliased_value_is_refused_naming_the_line_and_nothing_changes(
        start_center: StartCenter, tokens: tuple[Path, list[str]], tmp_path: Path) -> None:
    """Fixed after the review: an aliased secret was taken, then the sealing (and `policy
    get`'s redaction) replaced the anchored scalar with its anchor, leaving `*shared` with
    nothing to point to: a sealed Center could not restart (`found undefined alias`), and a
    redacted document did not apply back. Anchors and aliases are refused at apply now,
    naming the line, and the Center goes on with the policy it had."""
    _, flags = tokens
    store = f"sqlite:///{tmp_path / 'center.db'}"
    kek = new_kek(tmp_path / "kek")
    center = start_center(*flags, "--kek", kek, store=store)
    refused_apply = apply(center, aliased_policy())
    assert not refused_apply.applied
    assert [error for error in refused_apply.errors] == [
        "yaml: anchors and aliases (&name, *name) are not supported in a policy: write each "
        "value out at line 3, column 34"]
    assert center.stub().GetCenterInfo(center_pb2.GetCenterInfoRequest(),
                                       timeout=5).latest_revision == 0
    assert center.terminate() == 0
    again = start_center(*flags, "--kek", kek, store=store)  # restarts as it was
    assert again.stub().GetCenterInfo(center_pb2.GetCenterInfoRequest(),
                                      timeout=5).latest_revision == 0


# -- point 8: what a copy of the store gives -------------------------------------------------


def test_a_signing_key_sealed_in_place_leaves_no_copy_of_itself_in_the_file(
        tmp_path: Path) -> None:
    """Refused as claimed (point 8: "a copy of the SQLite file gives ... neither the key that
    signs what nodes trust"). The existing test reads the row; this one reads the file's
    bytes (free space of the page and WAL included) after a development store's key (tagged
    plaintext, and the bare 32 bytes of an older Center) is sealed in place."""
    for bare in (False, True):
        path = tmp_path / f"center-{bare}.db"
        development = SqliteStore(str(path))
        seed = development.signing_key_seed()
        development.close()
        if bare:
            with sqlite3.connect(path) as db:
                db.execute("UPDATE signing_key SET seed = ? WHERE id = 1", (seed,))
            db.close()
        sealing = SqliteStore(str(path), secret_box=KekBox(KekRing([Kek(os.urandom(32))])))
        assert sealing.signing_key_seed() == seed
        sealing.close()
        on_disk = b"".join(p.read_bytes() for p in tmp_path.glob(f"center-{bare}.db*"))
        assert seed not in on_disk


def test_a_secret_hidden_from_the_redaction_by_a_yaml_merge_key_is_refused() -> None:
    """Refused as claimed (point 8: `policy get`, history and the store see no secret). The
    redaction and the sealing find secrets on YAML's node tree (`keys.K.secret`); a merge
    key (`<<: {secret: ...}`) would put a secret where they do not look while the loaded
    policy still has it. The policy loader refuses merge keys, so no such policy is stored."""
    secret = "base64:" + base64.b64encode(os.urandom(32)).decode()
    text = ("version: 1\nkeys:\n"
            f'  k: {{<<: {{type: aes-256-gcm, secret: "{secret}"}}}}\n'
            "services: {}\n")
    assert secret_fields(text) == [] and secret in redact_policy(text)
    with pytest.raises(PolicyError):
        load_policy(text)
