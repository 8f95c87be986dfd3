"""The Center's admin RPCs with real Center processes: validation, revisions, history,
rollback, restarts and SIGKILL in the middle of applies."""

from __future__ import annotations

import base64
import hashlib
import random
import threading
import time
from pathlib import Path

import grpc
import pytest
from conftest import StartCenter
from support.center_policy import PolicyKeys, apply, parse, policy_yaml, service_in

from fastproxy.v1 import center_pb2, policy_pb2


def sqlite_url(path: Path) -> str:
    return "sqlite:///" + str(path)  # absolute path: the four-slash form


def latest(stub: object) -> center_pb2.GetPolicyResponse:
    """The latest revision as applied, secrets included (development mode may read them)."""
    response: center_pb2.GetPolicyResponse = stub.GetPolicy(  # type: ignore[attr-defined]
        center_pb2.GetPolicyRequest(show_secrets=True), timeout=5)
    return response


def test_every_validation_error_of_a_bad_file_reaches_the_admin_and_nothing_changes(
        start_center: StartCenter) -> None:
    keys = PolicyKeys()
    good = policy_yaml(keys)
    song_id_ref = "base64:" + base64.b64encode(keys.song_id).decode()
    bad_files: list[tuple[str, list[str]]] = [
        (good.replace("rps: 100", "rps: 0"),
         ["services.song_service.allow[0].rate_limit.rps: must be greater than 0"]),
        (good.replace("    timeout_ms: 2000\n", "    timeout_ms: 2000\n    colour: blue\n"),
         ["services.song_service.colour: unknown field"]),
        (good.replace("version: 1", "version: 2")
             .replace("encrypt: {key: song-enc}", "encrypt: {key: nope}")
             .replace("caller: radar_service", "caller: ghost"),
         ["version: must be 1",
          "services.song_service.encrypt.key: unknown key 'nope'",
          "services.weather_service.allow[0].caller: unknown service 'ghost'"]),
        (good.replace('secret: "base64:', 'secret: "base64:!!', 1),
         ["keys.song-enc.secret: base64: value is not valid base64"]),
        (good.replace(song_id_ref, "env:FASTPROXY_TEST_SURELY_UNSET"),
         ["keys.song-id.private: environment variable FASTPROXY_TEST_SURELY_UNSET is not set"]),
        (good.replace("  chat_service:\n    identity: {key: chat-id}\n", "  chat_service: {}\n"),
         ["services.chat_service.identity: is required: the service calls or is called by "
          "another service"]),
        (good.replace("encrypt: {key: song-enc}", "encrypt: {key: chat-id}"),
         ["services.song_service.encrypt.key: key 'chat-id' is not an encryption key "
          "(aes-256-gcm, chacha20-poly1305)"]),
        (good.replace("timeout_ms: 2000", "timeout_ms: -5"),
         ["services.song_service.timeout_ms: must be at least 1"]),
        (good + "  : [\n", ["yaml: expected <block end>, but found ':' at line 34, column 3"]),
    ]
    center = start_center()
    stub = center.stub()
    first = apply(stub, good, "the good one")
    assert first.applied and first.revision.revision == 1
    for text, expected in bad_files:
        response = apply(stub, text, "a bad one")
        assert not response.applied
        assert list(response.errors) == expected
        now = latest(stub)
        assert now.revision.revision == 1 and now.yaml == good
    history = stub.ListRevisions(center_pb2.ListRevisionsRequest(), timeout=5)
    assert [r.revision for r in history.revisions] == [1]
    for secret in keys.secrets().values():  # errors name fields, never material
        assert base64.b64encode(secret).decode() not in center.log()


def test_history_and_revisions_survive_a_restart_and_rollback_makes_a_new_revision(
        start_center: StartCenter, tmp_path: Path) -> None:
    store = sqlite_url(tmp_path / "center.db")
    keys = PolicyKeys()
    v1, v2 = policy_yaml(keys), policy_yaml(keys, song_timeout_ms=3000)
    center = start_center(store=store)
    stub = center.stub()
    assert apply(stub, v1, "first").revision.revision == 1
    assert apply(stub, v2, "second").revision.revision == 2
    assert center.terminate() == 0

    center = start_center(store=store)
    stub = center.stub()
    history = stub.ListRevisions(center_pb2.ListRevisionsRequest(), timeout=5).revisions
    assert [(r.revision, r.comment) for r in history] == [(2, "second"), (1, "first")]
    assert history[0].content_hash == hashlib.sha256(v2.encode()).hexdigest()
    assert stub.GetPolicy(center_pb2.GetPolicyRequest(revision=1, show_secrets=True),
                          timeout=5).yaml == v1

    same = apply(stub, v2, "again")
    assert not same.applied and same.revision.revision == 2 and not same.errors
    assert "unchanged" in same.message and "2" in same.message

    rolled = stub.RollbackPolicy(center_pb2.RollbackPolicyRequest(revision=1), timeout=5)
    assert rolled.applied and rolled.revision.revision == 3
    assert rolled.revision.rolled_back_from == 1
    assert latest(stub).yaml == v1
    with pytest.raises(grpc.RpcError) as missing:
        stub.RollbackPolicy(center_pb2.RollbackPolicyRequest(revision=99), timeout=5)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert latest(stub).revision.revision == 3


def test_sigkill_during_applies_restarts_on_a_whole_applied_revision_and_serves_it(
        start_center: StartCenter, tmp_path: Path) -> None:
    store = sqlite_url(tmp_path / "center.db")
    keys = PolicyKeys()
    applied_texts: dict[str, int] = {}  # every YAML sent -> its song timeout
    rng = random.Random()
    counter = iter(range(1000, 10**6))
    answered: list[int] = []  # applies the Center answered before it died
    for _round in range(3):
        center = start_center(store=store)
        stub = center.stub()
        stop = threading.Event()

        def send_applies(stub: object = stub, stop: threading.Event = stop) -> None:
            while not stop.is_set():
                timeout = next(counter)
                text = policy_yaml(keys, song_timeout_ms=timeout)
                applied_texts[text] = timeout
                try:
                    apply(stub, text, f"timeout {timeout}")
                    answered.append(timeout)
                except grpc.RpcError:
                    return  # the Center died under us

        sender = threading.Thread(target=send_applies)
        sender.start()
        time.sleep(rng.uniform(0.2, 0.8))
        center.kill()
        stop.set()
        sender.join(timeout=15)
        assert not sender.is_alive()
        assert answered, "the Center died before any apply: the round tested nothing"

        center = start_center(store=store)
        stub = center.stub()
        now = latest(stub)
        assert now.yaml in applied_texts
        assert now.revision.content_hash == hashlib.sha256(now.yaml.encode()).hexdigest()
        watcher = center.watch().hello("chat-1", policy_pb2.ROLE_OUT, "chat_service")
        served = parse(watcher.next_snapshot())
        assert served.revision == now.revision.revision
        assert service_in(served, "song_service").timeout_ms == applied_texts[now.yaml]
        center.close_channels()
        assert center.terminate() == 0
