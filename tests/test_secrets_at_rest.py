"""Policy secrets at rest and on screen (issue 13, point 8).

A Center given `--kek` keeps every inline secret of a policy sealed in its store (the file on
disk holds none of them), and still serves nodes their keys, also after a restart; without
the KEK, or with another, it says which KEK it needs. `fastproxy policy get` shows
`<redacted>` unless an admin allowed to read secrets asks `--show-secrets`, and a redacted
document applied back keeps the stored secrets. The sealing is a layer above the store
(`center_svc.sealed_policy`), so every store backend gets it.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import CenterProcess, StartCenter
from support.center_policy import PolicyKeys, parse, policy_yaml

from center_svc.kek import BLOB_MAGIC, Kek, KekError, KekRing, load_kek
from center_svc.sealed_policy import SealedStore, open_secrets, seal_secrets
from center_svc.store import MemoryStore
from fastproxy.cli import commands as cli
from fastproxy.policy import load_policy
from fastproxy.policy.redaction import (
    REDACTED,
    RedactedValueError,
    redact_policy,
    replace_values,
    restore_redacted,
    secret_fields,
)
from fastproxy.v1 import center_pb2, policy_pb2

IN = policy_pb2.ROLE_IN
OPS, ROOT, SONG = "ops-token", "root-token", "song-token"


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def new_kek(path: Path) -> Path:
    path.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    return path


def secret_texts(keys: PolicyKeys) -> list[bytes]:
    """Every form a secret of the policy could be stored in: raw and base64."""
    forms = []
    for material in keys.secrets().values():
        forms += [material, base64.b64encode(material)]
    return forms


def stored_signing_key(folder: Path) -> bytes:
    """The snapshot-signing key's row as the store file holds it."""
    with sqlite3.connect(folder / "center.db") as db:
        row = db.execute("SELECT seed FROM signing_key WHERE id = 1").fetchone()
    db.close()
    return bytes(row[0])


def store_bytes(folder: Path) -> bytes:
    """The database file and its WAL, as they lie on disk."""
    return b"".join(p.read_bytes() for p in sorted(folder.glob("center.db*")))


@pytest.fixture
def token_files(tmp_path: Path) -> list[str]:
    nodes = tmp_path / "node-tokens"
    nodes.write_text(f"song_service[in]: {SONG}\n")
    admins = tmp_path / "admin-tokens"
    admins.write_text(f"ops: {OPS}\nroot[read-secrets]: {ROOT}\n")
    return ["--node-tokens", str(nodes), "--admin-tokens", str(admins)]


@pytest.fixture
def sealed_center(start_center: StartCenter, tmp_path: Path,
                  token_files: list[str]) -> Iterator[tuple[CenterProcess, Path, str]]:
    store = f"sqlite:///{tmp_path / 'center.db'}"
    kek = new_kek(tmp_path / "kek")
    center = start_center(*token_files, "--kek", f"file:{kek}", store=store)
    yield center, kek, store


def song_keys(center: CenterProcess) -> dict[str, bytes]:
    watch = center.watch(bearer(SONG)).hello("song-1", IN, "song_service")
    keys = {k.name: k.secret for k in parse(watch.next_snapshot()).keys}
    watch.close()
    return keys


def apply(center: CenterProcess, text: str, token: str = OPS) -> center_pb2.ApplyPolicyResponse:
    response: center_pb2.ApplyPolicyResponse = center.stub().ApplyPolicy(
        center_pb2.ApplyPolicyRequest(yaml=text), timeout=10, metadata=bearer(token))
    return response


def test_secrets_are_sealed_in_the_store_and_nodes_still_get_them_after_a_restart(
        sealed_center: tuple[CenterProcess, Path, str], start_center: StartCenter,
        token_files: list[str], tmp_path: Path) -> None:
    center, kek, store = sealed_center
    keys = PolicyKeys()
    assert apply(center, policy_yaml(keys)).applied
    assert song_keys(center)["song-enc"] == keys.song_enc
    on_disk = store_bytes(tmp_path)
    assert b"kek:" + load_kek(f"file:{kek}").key_id.encode() + b":" in on_disk
    for secret in secret_texts(keys):
        assert secret not in on_disk
    again = apply(center, policy_yaml(keys))  # sealed values of unchanged secrets are kept
    assert not again.applied and again.message == "unchanged: identical to revision 1"

    assert center.terminate() == 0
    signing_key = stored_signing_key(tmp_path)
    assert signing_key.startswith(BLOB_MAGIC + bytes.fromhex(load_kek(f"file:{kek}").key_id))
    restarted = start_center(*token_files, "--kek", f"file:{kek}", store=store)
    assert song_keys(restarted)["song-enc"] == keys.song_enc
    assert stored_signing_key(tmp_path) == signing_key  # the same key, still sealed
    assert "policy secrets in the store are sealed with KEK" in restarted.log()
    for secret in secret_texts(keys):
        assert secret not in store_bytes(tmp_path)
        assert secret.decode("latin-1") not in restarted.log()


def run_center(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "center_svc", "--listen", "127.0.0.1:0",
                           *flags], capture_output=True, text=True, timeout=30)


def test_a_center_without_the_kek_of_its_store_says_which_one_it_needs(
        sealed_center: tuple[CenterProcess, Path, str], token_files: list[str],
        tmp_path: Path) -> None:
    center, kek, store = sealed_center
    assert apply(center, policy_yaml(PolicyKeys())).applied
    assert center.terminate() == 0
    needed = load_kek(f"file:{kek}").key_id

    without = run_center(*token_files, "--store", store)
    assert without.returncode == 2
    assert without.stderr.splitlines()[-1].endswith(
        "would keep policy secrets unencrypted: add --kek file:PATH or --kek env:VAR "
        "(32 bytes, raw or base64)")
    development = run_center("--store", store)  # development mode may run without a KEK
    assert development.returncode == 1
    assert development.stderr.splitlines()[-1].endswith(
        f"cannot open the signing key: sealed with KEK {needed}: start the Center with --kek")
    other = new_kek(tmp_path / "other-kek")
    wrong = run_center(*token_files, "--store", store, "--kek", f"file:{other}")
    assert wrong.returncode == 1
    assert (f"sealed with KEK {needed}, which is not given (--kek gives "
            f"{load_kek(f'file:{other}').key_id})") in wrong.stderr.splitlines()[-1]
    bad = run_center("--store", store, "--kek", "env:FASTPROXY_NO_SUCH_KEK")
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == [
        "center_svc: error: --kek env:FASTPROXY_NO_SUCH_KEK: environment variable "
        "FASTPROXY_NO_SUCH_KEK is not set"]


def test_a_development_center_without_a_kek_says_so_at_start(
        start_center: StartCenter) -> None:
    center = start_center()
    assert "no --kek: policy secrets are kept unencrypted in the store memory://" \
        in center.log()


# -- on screen -------------------------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_policy_get_redacts_and_the_redacted_document_applies_back_with_its_secrets(
        sealed_center: tuple[CenterProcess, Path, str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    center, _, _ = sealed_center
    keys = PolicyKeys()
    key_file = tmp_path / "extra.key"
    key_file.write_text(base64.b64encode(os.urandom(32)).decode())
    text = policy_yaml(keys).replace(
        "keys:\n", f'keys:\n  # a key kept in a file: its reference is shown\n'
                   f'  extra: {{type: aes-256-gcm, secret: "file:{key_file}"}}\n', 1)
    assert apply(center, text).applied
    monkeypatch.setenv("FASTPROXY_ADMIN_TOKEN", OPS)
    where = ("--center", center.address)

    code, shown, err = run_cli(capsys, "policy", "get", *where)
    assert code == 0, err
    assert shown.count(f'"{REDACTED}"') == len(keys.secrets())
    assert f'secret: "file:{key_file}"' in shown
    assert "# a key kept in a file" in shown
    code, as_json, _ = run_cli(capsys, "policy", "get", "--json", *where)
    assert json.loads(as_json)["yaml"] == shown
    code, history, _ = run_cli(capsys, "policy", "history", "--json", *where)
    for output in (shown, as_json, history):
        for secret in secret_texts(keys):
            assert secret.decode("latin-1") not in output

    edited = tmp_path / "edited.yaml"
    edited.write_text(shown.replace("timeout_ms: 2000", "timeout_ms: 2500"))
    code, out, err = run_cli(capsys, "policy", "apply", str(edited), *where)
    assert code == 0, err
    assert out.startswith("applied: revision 2")
    assert song_keys(center)["song-enc"] == keys.song_enc

    code, _, err = run_cli(capsys, "policy", "get", "--show-secrets", *where)
    assert code == 1
    assert err.splitlines() == [
        "fastproxy: the Center at " + center.address + " refused the credential: permission "
        "denied: admin:ops may not read secrets (the read-secrets role allows it)"]
    monkeypatch.setenv("FASTPROXY_ADMIN_TOKEN", ROOT)
    code, full, err = run_cli(capsys, "policy", "get", "--show-secrets", *where)
    assert code == 0, err
    assert full == text.replace("timeout_ms: 2000", "timeout_ms: 2500")
    assert REDACTED not in full

    for secret in secret_texts(keys):
        assert secret.decode("latin-1") not in center.log()


def test_a_redacted_value_with_nothing_to_keep_is_refused_naming_the_field(
        sealed_center: tuple[CenterProcess, Path, str]) -> None:
    center, _, _ = sealed_center
    keys = PolicyKeys()
    assert apply(center, policy_yaml(keys)).applied
    renamed = redact_policy(policy_yaml(keys)).replace("song-enc", "song-enc-v2")
    refused = apply(center, renamed)
    assert not refused.applied
    assert refused.errors == [f"keys.song-enc-v2.secret: is {REDACTED}, but the latest "
                              "revision has no such value to keep"]


# -- the layers, one by one ------------------------------------------------------------------


def test_redaction_touches_only_inline_secret_values_and_keeps_the_layout() -> None:
    text = ('version: 1\n'
            'keys:\n'
            '  a: {type: aes-256-gcm, secret: "base64:QUFB"}   # inline\n'
            '  b:\n'
            '    type: hmac-sha256\n'
            '    secret: |\n'
            '      base64:QkJC\n'
            '  c: {type: hmac-sha256, secret: "env:C_KEY"}\n'
            'services: {}\n')
    redacted = redact_policy(text)
    assert redacted == ('version: 1\n'
                        'keys:\n'
                        '  a: {type: aes-256-gcm, secret: "<redacted>"}   # inline\n'
                        '  b:\n'
                        '    type: hmac-sha256\n'
                        '    secret: "<redacted>"\n'
                        '  c: {type: hmac-sha256, secret: "env:C_KEY"}\n'
                        'services: {}\n')
    assert restore_redacted(redacted, text).count("base64:") == 2
    with pytest.raises(RedactedValueError):
        restore_redacted(redacted, None)


def test_the_kek_seals_blobs_and_values_bound_to_their_place_and_rotates() -> None:
    old, new = Kek(os.urandom(32)), Kek(os.urandom(32))
    ring = KekRing([old])
    blob = ring.seal(b"signing seed", b"signing-key")
    assert ring.open(blob, b"signing-key") == b"signing seed"
    with pytest.raises(KekError, match="moved from another place"):
        ring.open(blob, b"other")
    with pytest.raises(KekError, match=f"sealed with KEK {old.key_id}, which is not given"):
        KekRing([new]).open(blob, b"signing-key")

    text = policy_yaml(PolicyKeys())
    sealed = seal_secrets(text, ring)
    assert "base64:" not in sealed.split("services:")[0]
    values = {f.path: f.value for f in secret_fields(sealed)}
    moved = {"keys.song-enc.secret": values["keys.weather-enc.secret"]}  # a value moved
    with pytest.raises(KekError, match=r"keys\.song-enc\.secret: .* moved from another place"):
        open_secrets(replace_values(sealed, secret_fields(sealed), lambda f: moved.get(f.path)),
                     ring)

    rotated = KekRing([new, old])  # --kek NEW --kek OLD
    assert open_secrets(sealed, rotated) == text
    resealed = seal_secrets(text, rotated)
    assert f"kek:{new.key_id}:" in resealed and old.key_id not in resealed
    with pytest.raises(KekError, match="not given"):
        open_secrets(resealed, ring)


def test_the_sealed_store_works_over_any_backend_and_hides_secrets_from_it() -> None:
    backend = MemoryStore()
    store = SealedStore(backend, KekRing([Kek(os.urandom(32))]))
    keys = PolicyKeys()
    text = policy_yaml(keys)
    first = store.append(text, "admin:ops", "")
    assert first.applied and first.revision.yaml == text
    assert not store.append(text, "admin:ops", "").applied
    stored = backend.latest()
    assert stored is not None and stored.yaml != text
    for secret in secret_texts(keys):
        assert secret.decode("latin-1") not in stored.yaml
    latest = store.latest()
    assert latest is not None and load_policy(latest.yaml).keys["song-enc"].secret \
        == keys.song_enc
    # the history lists revisions as stored (sealed: listing needs no KEK); `get` opens one
    assert [r.revision for r in store.history()] == [1]
    assert store.history()[0].yaml == stored.yaml
    opened_first = store.get(1)
    assert opened_first is not None and opened_first.yaml == text
    store.close()


def test_show_secrets_needs_the_read_secrets_role_and_is_audited(
        sealed_center: tuple[CenterProcess, Path, str]) -> None:
    center, _, _ = sealed_center
    assert apply(center, policy_yaml(PolicyKeys())).applied
    stub = center.stub()
    with pytest.raises(grpc.RpcError) as refused:
        stub.GetPolicy(center_pb2.GetPolicyRequest(show_secrets=True), timeout=5,
                       metadata=bearer(OPS))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    events = stub.ListAuditEvents(center_pb2.ListAuditEventsRequest(), timeout=5,
                                  metadata=bearer(OPS)).events
    assert events[0].actor == "admin:ops" and events[0].action == "denied"
    assert "may not read secrets" in events[0].detail
