"""Specification of the policy file: what loads, and the exact error (path first) for what
does not. See CONTRACT.md, "Policy file"."""

from __future__ import annotations

import base64
import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastproxy.policy import (
    AllowRule,
    Compression,
    KeyRef,
    KeyType,
    PolicyError,
    RateLimit,
    RetryPolicy,
    load_policy,
    validate_policy,
)

# Distinctive, recognizable secrets: the leak test searches for them in every output.
SONG_ENC_SECRET = bytes(range(0xA0, 0xC0))  # 32 bytes
SONG_ENC_OLD_SECRET = bytes(range(0x40, 0x60))  # 32 bytes
CHAT_ID_SECRET = b"chat-identity-hmac-secret-\x01\x02\x03\xfe\xff"
SONG_ID_SEED = bytes(range(0x60, 0x80))  # the ed25519 private seed
ALL_SECRETS = (SONG_ENC_SECRET, SONG_ENC_OLD_SECRET, CHAT_ID_SECRET, SONG_ID_SEED)


def b64(data: bytes) -> str:
    return "base64:" + base64.b64encode(data).decode()


def write_song_pem(folder: Path) -> Path:
    pem = Ed25519PrivateKey.from_private_bytes(SONG_ID_SEED).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = folder / "song.pem"
    path.write_bytes(pem)
    return path


def full_document(pem_path: Path) -> dict[str, Any]:
    return {
        "version": 1,
        "keys": {
            "song-enc-v1": {"type": "aes-256-gcm", "secret": b64(SONG_ENC_SECRET)},
            "song-enc-v0": {"type": "chacha20-poly1305", "secret": b64(SONG_ENC_OLD_SECRET)},
            "chat-id-v1": {"type": "hmac-sha256", "secret": "env:CHAT_ID_KEY"},
            "song-id-v1": {"type": "ed25519", "private": f"file:{pem_path}"},
        },
        "services": {
            "song_service": {
                "grpc_services": ["demo.v1.Echo"],
                "endpoints": ["127.0.0.1:9101"],
                "identity": {"key": "song-id-v1"},
                "encrypt": {"key": "song-enc-v1", "accept": ["song-enc-v0"]},
                "compress": {"algorithm": "gzip", "min_bytes": 1024},
                "timeout_ms": 2000,
                "retry": {"max_attempts": 3, "initial_backoff_ms": 50, "max_backoff_ms": 400},
                "allow": [
                    {
                        "caller": "chat_service",
                        "methods": ["/demo.v1.Echo/*"],
                        "rate_limit": {"rps": 100, "burst": 20},
                    }
                ],
            },
            "chat_service": {"identity": {"key": "chat-id-v1"}},
        },
    }


ENVIRON = {"CHAT_ID_KEY": base64.b64encode(CHAT_ID_SECRET).decode()}


@pytest.fixture
def pem_path(tmp_path: Path) -> Path:
    return write_song_pem(tmp_path)


# --- the valid policy ------------------------------------------------------------------


def test_full_policy_loads_with_every_value_resolved(
    pem_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAT_ID_KEY", ENVIRON["CHAT_ID_KEY"])
    policy = load_policy(yaml.safe_dump(full_document(pem_path)))

    assert set(policy.keys) == {"song-enc-v1", "song-enc-v0", "chat-id-v1", "song-id-v1"}
    assert policy.keys["song-enc-v1"].type is KeyType.AES_256_GCM
    assert policy.keys["song-enc-v1"].secret == SONG_ENC_SECRET
    assert policy.keys["song-enc-v0"].type is KeyType.CHACHA20_POLY1305
    assert policy.keys["song-enc-v0"].secret == SONG_ENC_OLD_SECRET
    assert policy.keys["chat-id-v1"].type is KeyType.HMAC_SHA256
    assert policy.keys["chat-id-v1"].secret == CHAT_ID_SECRET
    assert policy.keys["chat-id-v1"].public == b""
    song_id = policy.keys["song-id-v1"]
    assert song_id.type is KeyType.ED25519
    assert song_id.secret == SONG_ID_SEED
    assert song_id.public == Ed25519PrivateKey.from_private_bytes(
        SONG_ID_SEED).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    song = policy.services["song_service"]
    assert song.name == "song_service"
    assert song.grpc_services == ("demo.v1.Echo",)
    assert song.endpoints == ("127.0.0.1:9101",)
    assert song.identity == KeyRef("song-id-v1")
    assert song.encrypt == KeyRef("song-enc-v1", ("song-enc-v0",))
    assert song.encrypt.all == ("song-enc-v1", "song-enc-v0")
    assert song.compress == Compression("gzip", 1024)
    assert song.timeout_ms == 2000
    assert song.retry == RetryPolicy(3, 50, 400)
    assert song.allow == (
        AllowRule("chat_service", ("/demo.v1.Echo/*",), RateLimit(100.0, 20)),
    )
    chat = policy.services["chat_service"]
    assert chat.identity == KeyRef("chat-id-v1")
    assert (chat.encrypt, chat.compress, chat.timeout_ms, chat.allow, chat.retry) == (
        None, None, 0, (), None)
    assert policy.callers_of(song) == ("chat_service",)
    assert policy.callees_of("chat_service") == ("song_service",)


def test_raw_32_byte_ed25519_seed_and_omitted_optionals_load(pem_path: Path) -> None:
    document = full_document(pem_path)
    document["keys"]["song-id-v1"]["private"] = b64(SONG_ID_SEED)
    del document["services"]["song_service"]["allow"][0]["rate_limit"]["burst"]
    del document["services"]["song_service"]["compress"]["min_bytes"]
    policy = validate_policy(document, ENVIRON)
    assert policy.keys["song-id-v1"].secret == SONG_ID_SEED
    assert policy.services["song_service"].allow[0].rate_limit == RateLimit(100.0, 100)
    assert policy.services["song_service"].compress == Compression("gzip", 1024)


def test_star_caller_is_accepted(pem_path: Path) -> None:
    document = full_document(pem_path)
    document["services"]["song_service"]["allow"][0]["caller"] = "*"
    policy = validate_policy(document, ENVIRON)
    assert policy.callers_of(policy.services["song_service"]) == ("chat_service", "song_service")


def test_policy_with_no_services_is_valid_and_empty() -> None:
    policy = load_policy("version: 1\n")
    assert dict(policy.keys) == {} and dict(policy.services) == {}


# --- the table of bad documents ----------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]
_SEGMENT = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _walk(document: Any, path: str) -> tuple[Any, str | int]:
    segments: list[str | int] = [
        int(index) if index else name for name, index in _SEGMENT.findall(path)
    ]
    node = document
    for segment in segments[:-1]:
        node = node[segment]
    return node, segments[-1]


def put(path: str, value: Any) -> Mutation:
    def mutate(document: dict[str, Any]) -> None:
        parent, last = _walk(document, path)
        parent[last] = value
    return mutate


def drop(path: str) -> Mutation:
    def mutate(document: dict[str, Any]) -> None:
        parent, last = _walk(document, path)
        del parent[last]
    return mutate


def both(*mutations: Mutation) -> Mutation:
    def mutate(document: dict[str, Any]) -> None:
        for mutation in mutations:
            mutation(document)
    return mutate


SONG = "services.song_service"
RULE = f"{SONG}.allow[0]"
METHOD_HELP = "method pattern (/pkg.Service/Method, /pkg.Service/* or *)"
ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
    serialization.NoEncryption(),
)

BAD_DOCUMENTS: list[tuple[str, Mutation, list[str]]] = [
    # top level
    ("missing version", drop("version"), ["version: is required"]),
    ("version 2", put("version", 2), ["version: must be 1"]),
    ("version as string", put("version", "1"), ["version: must be 1"]),
    ("version as float", put("version", 1.0), ["version: must be 1"]),
    ("version as bool", put("version", True), ["version: must be 1"]),
    ("unknown top-level field", put("routes", []), ["routes: unknown field"]),
    ("keys not a mapping", put("keys", ["song-enc-v1"]), [
        "keys: must be a mapping",
        f"{SONG}.identity.key: unknown key 'song-id-v1'",
        f"{SONG}.encrypt.key: unknown key 'song-enc-v1'",
        f"{SONG}.encrypt.accept[0]: unknown key 'song-enc-v0'",
        "services.chat_service.identity.key: unknown key 'chat-id-v1'",
    ]),
    ("services not a mapping", put("services", "song_service"),
     ["services: must be a mapping"]),
    # keys
    ("unknown key field", put("keys.song-enc-v1.comment", "old"),
     ["keys.song-enc-v1.comment: unknown field"]),
    ("key not a mapping", put("keys.song-enc-v1", "aes-256-gcm"),
     ["keys.song-enc-v1: must be a mapping"]),
    ("bad key type", put("keys.song-enc-v1.type", "aes-128-cbc"),
     ["keys.song-enc-v1.type: must be one of aes-256-gcm, chacha20-poly1305, hmac-sha256, "
      "ed25519"]),
    ("missing key type", drop("keys.song-enc-v1.type"), ["keys.song-enc-v1.type: is required"]),
    ("missing secret", drop("keys.song-enc-v1.secret"),
     ["keys.song-enc-v1.secret: is required"]),
    ("ed25519 with secret instead of private",
     put("keys.song-id-v1", {"type": "ed25519", "secret": b64(SONG_ID_SEED)}),
     ["keys.song-id-v1.secret: unknown field", "keys.song-id-v1.private: is required"]),
    ("secret not a string", put("keys.song-enc-v1.secret", 12345),
     ["keys.song-enc-v1.secret: must be a string: base64:..., env:VAR or file:PATH"]),
    ("secret without scheme", put("keys.song-enc-v1.secret", "plain:abcd"),
     ["keys.song-enc-v1.secret: must start with base64:, env: or file:"]),
    ("bad base64", put("keys.song-enc-v1.secret", "base64:not*base64!"),
     ["keys.song-enc-v1.secret: base64: value is not valid base64"]),
    ("unset env var", put("keys.chat-id-v1.secret", "env:FASTPROXY_TEST_UNSET_VAR"),
     ["keys.chat-id-v1.secret: environment variable FASTPROXY_TEST_UNSET_VAR is not set"]),
    ("unreadable file", put("keys.song-id-v1.private", "file:/nonexistent/song.pem"),
     ["keys.song-id-v1.private: file /nonexistent/song.pem cannot be read "
      "(No such file or directory)"]),
    ("AES key of 16 bytes", put("keys.song-enc-v1.secret", b64(bytes(16))),
     ["keys.song-enc-v1.secret: must be 32 bytes for aes-256-gcm, not 16"]),
    ("ChaCha key of 33 bytes", put("keys.song-enc-v0.secret", b64(bytes(33))),
     ["keys.song-enc-v0.secret: must be 32 bytes for chacha20-poly1305, not 33"]),
    ("HMAC key of 8 bytes", put("keys.chat-id-v1.secret", b64(bytes(8))),
     ["keys.chat-id-v1.secret: must be at least 16 bytes, not 8"]),
    ("ed25519 seed of 31 bytes", put("keys.song-id-v1.private", b64(bytes(31))),
     ["keys.song-id-v1.private: must be an ed25519 private key (32 raw bytes or PEM)"]),
    ("ed25519 from an EC PEM", put("keys.song-id-v1.private",
                                   "base64:" + base64.b64encode(ec_pem).decode()),
     ["keys.song-id-v1.private: must be an ed25519 private key (32 raw bytes or PEM)"]),
    ("bad key name", put("keys.bad key!", {"type": "aes-256-gcm",
                                           "secret": b64(SONG_ENC_SECRET)}),
     ["keys.bad key!: is not a valid key name (letters, digits, '.', '_', '-')"]),
    # services
    ("bad service name", put("services.-song", {}),
     ["services.-song: is not a valid service name (letters, digits, '.', '_', '-')"]),
    ("service not a mapping", put("services.chat_service", ["identity"]),
     ["services.chat_service: must be a mapping"]),
    ("unknown service field", put(f"{SONG}.colour", "blue"), [f"{SONG}.colour: unknown field"]),
    ("unknown key by identity", put("services.chat_service.identity.key", "chat-id-v9"),
     ["services.chat_service.identity.key: unknown key 'chat-id-v9'"]),
    ("unknown key by encrypt", put(f"{SONG}.encrypt.key", "song-enc-v9"),
     [f"{SONG}.encrypt.key: unknown key 'song-enc-v9'"]),
    ("unknown key by accept", put(f"{SONG}.encrypt.accept", ["song-enc-v0", "song-enc-v9"]),
     [f"{SONG}.encrypt.accept[1]: unknown key 'song-enc-v9'"]),
    ("encrypt with a signing key", put(f"{SONG}.encrypt.key", "chat-id-v1"),
     [f"{SONG}.encrypt.key: key 'chat-id-v1' is not an encryption key "
      "(aes-256-gcm, chacha20-poly1305)"]),
    ("identity with an encryption key", put(f"{SONG}.identity.key", "song-enc-v1"),
     [f"{SONG}.identity.key: key 'song-enc-v1' is not a signing key (hmac-sha256, ed25519)"]),
    ("identity accepts an encryption key", put(f"{SONG}.identity.accept", ["song-enc-v0"]),
     [f"{SONG}.identity.accept[0]: key 'song-enc-v0' is not a signing key "
      "(hmac-sha256, ed25519)"]),
    ("identity not a mapping", put(f"{SONG}.identity", "song-id-v1"),
     [f"{SONG}.identity: must be a mapping"]),
    ("identity without key", put(f"{SONG}.identity", {"accept": ["song-id-v1"]}),
     [f"{SONG}.identity.key: is required"]),
    ("bad grpc service name", put(f"{SONG}.grpc_services", ["demo..Echo"]),
     [f"{SONG}.grpc_services[0]: 'demo..Echo' is not a valid gRPC service name"]),
    ("grpc service listed twice", put(f"{SONG}.grpc_services", ["demo.v1.Echo", "demo.v1.Echo"]),
     [f"{SONG}.grpc_services[1]: 'demo.v1.Echo' is listed twice"]),
    ("grpc service routed to two services",
     put("services.chat_service.grpc_services", ["demo.v1.Chat", "demo.v1.Echo"]),
     ["services.chat_service.grpc_services[1]: 'demo.v1.Echo' is already routed to "
      "service 'song_service'"]),
    ("endpoint without port", put(f"{SONG}.endpoints", ["localhost"]),
     [f"{SONG}.endpoints[0]: 'localhost' is not a valid HOST:PORT endpoint"]),
    ("endpoint with a trailing newline", put(f"{SONG}.endpoints", ["127.0.0.1:9101\n"]),
     [f"{SONG}.endpoints[0]: '127.0.0.1:9101\\n' is not a valid HOST:PORT endpoint"]),
    ("endpoint port out of range", put(f"{SONG}.endpoints", ["127.0.0.1:70000"]),
     [f"{SONG}.endpoints[0]: port 70000 is not between 1 and 65535"]),
    ("endpoints not a list", put(f"{SONG}.endpoints", "127.0.0.1:9101"),
     [f"{SONG}.endpoints: must be a list"]),
    ("compress unknown algorithm", put(f"{SONG}.compress.algorithm", "brotli"),
     [f"{SONG}.compress.algorithm: must be one of gzip, zstd"]),
    ("compress min_bytes negative", put(f"{SONG}.compress.min_bytes", -1),
     [f"{SONG}.compress.min_bytes: must be at least 0"]),
    ("timeout_ms 0", put(f"{SONG}.timeout_ms", 0), [f"{SONG}.timeout_ms: must be at least 1"]),
    ("timeout_ms as string", put(f"{SONG}.timeout_ms", "2s"),
     [f"{SONG}.timeout_ms: must be an integer"]),
    ("timeout_ms as bool", put(f"{SONG}.timeout_ms", True),
     [f"{SONG}.timeout_ms: must be an integer"]),
    ("timeout_ms as float", put(f"{SONG}.timeout_ms", 1.5),
     [f"{SONG}.timeout_ms: must be an integer"]),
    ("retry max_attempts 0", put(f"{SONG}.retry.max_attempts", 0),
     [f"{SONG}.retry.max_attempts: must be at least 1"]),
    ("retry max_attempts 6", put(f"{SONG}.retry.max_attempts", 6),
     [f"{SONG}.retry.max_attempts: must be at most 5"]),
    ("retry without max_attempts", drop(f"{SONG}.retry.max_attempts"),
     [f"{SONG}.retry.max_attempts: is required"]),
    ("retry backoff shrinking", put(f"{SONG}.retry.max_backoff_ms", 10),
     [f"{SONG}.retry.max_backoff_ms: must be at least initial_backoff_ms"]),
    ("retry unknown field", put(f"{SONG}.retry.jitter", True),
     [f"{SONG}.retry.jitter: unknown field"]),
    # allow rules
    ("allow not a list", put(f"{SONG}.allow", {"caller": "chat_service"}),
     [f"{SONG}.allow: must be a list"]),
    ("allow rule not a mapping", put(f"{SONG}.allow", ["chat_service"]),
     [f"{RULE}: must be a mapping"]),
    ("unknown allow field", put(f"{RULE}.deny", True), [f"{RULE}.deny: unknown field"]),
    ("unknown caller service", put(f"{RULE}.caller", "nobody"),
     [f"{RULE}.caller: unknown service 'nobody'"]),
    ("unknown caller with bad methods",
     both(put(f"{RULE}.caller", "nobody"), put(f"{RULE}.methods", ["Echo"])),
     [f"{RULE}.methods[0]: 'Echo' is not a valid {METHOD_HELP}",
      f"{RULE}.caller: unknown service 'nobody'"]),
    ("caller missing", drop(f"{RULE}.caller"), [f"{RULE}.caller: is required"]),
    ("method without slash", put(f"{RULE}.methods", ["Echo"]),
     [f"{RULE}.methods[0]: 'Echo' is not a valid {METHOD_HELP}"]),
    ("method with empty name", put(f"{RULE}.methods", ["/demo.v1.Echo/"]),
     [f"{RULE}.methods[0]: '/demo.v1.Echo/' is not a valid {METHOD_HELP}"]),
    ("method with double dot", put(f"{RULE}.methods", ["/demo..Echo/Say"]),
     [f"{RULE}.methods[0]: '/demo..Echo/Say' is not a valid {METHOD_HELP}"]),
    ("method partial wildcard", put(f"{RULE}.methods", ["/demo.v1.Echo/Sa*"]),
     [f"{RULE}.methods[0]: '/demo.v1.Echo/Sa*' is not a valid {METHOD_HELP}"]),
    ("method not a string", put(f"{RULE}.methods", [7]),
     [f"{RULE}.methods[0]: must be a non-empty string"]),
    ("empty methods list", put(f"{RULE}.methods", []),
     [f"{RULE}.methods: must be a non-empty list of method patterns"]),
    ("null methods", put(f"{RULE}.methods", None),
     [f"{RULE}.methods: must be a non-empty list of method patterns"]),
    ("methods missing", drop(f"{RULE}.methods"), [f"{RULE}.methods: is required"]),
    ("rate_limit rps 0", put(f"{RULE}.rate_limit.rps", 0),
     [f"{RULE}.rate_limit.rps: must be greater than 0"]),
    ("rate_limit rps negative", put(f"{RULE}.rate_limit.rps", -5),
     [f"{RULE}.rate_limit.rps: must be greater than 0"]),
    ("rate_limit rps not a number", put(f"{RULE}.rate_limit.rps", "fast"),
     [f"{RULE}.rate_limit.rps: must be a number"]),
    ("rate_limit rps bool", put(f"{RULE}.rate_limit.rps", True),
     [f"{RULE}.rate_limit.rps: must be a number"]),
    ("rate_limit rps NaN", put(f"{RULE}.rate_limit.rps", float("nan")),
     [f"{RULE}.rate_limit.rps: must be a number"]),
    ("rate_limit rps infinite", put(f"{RULE}.rate_limit.rps", float("inf")),
     [f"{RULE}.rate_limit.rps: must be at most 1000000000"]),
    ("rate_limit rps huge integer", put(f"{RULE}.rate_limit.rps", 10**400),
     [f"{RULE}.rate_limit.rps: must be at most 1000000000"]),
    ("rate_limit burst 0", put(f"{RULE}.rate_limit.burst", 0),
     [f"{RULE}.rate_limit.burst: must be at least 1"]),
    ("rate_limit not a mapping", put(f"{RULE}.rate_limit", 100),
     [f"{RULE}.rate_limit: must be a mapping"]),
    # identity needed by whoever calls or is called
    ("called service without identity", drop(f"{SONG}.identity"),
     [f"{SONG}.identity: is required: the service calls or is called by another service"]),
    ("calling service without identity", drop("services.chat_service.identity"),
     ["services.chat_service.identity: is required: the service calls or is called by "
      "another service"]),
]


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [pytest.param(m, e, id=name) for name, m, e in BAD_DOCUMENTS],
)
def test_bad_document_is_refused_with_the_exact_error(
    pem_path: Path, mutation: Mutation, expected: list[str]
) -> None:
    document = full_document(pem_path)
    mutation(document)
    with pytest.raises(PolicyError) as refused:
        validate_policy(document, ENVIRON)
    assert refused.value.errors == expected


def test_the_table_covers_at_least_thirty_documents() -> None:
    assert len(BAD_DOCUMENTS) >= 30


def test_every_error_of_a_document_is_reported_at_once(pem_path: Path) -> None:
    document = full_document(pem_path)
    document["version"] = 3
    document["keys"]["song-enc-v1"]["secret"] = b64(bytes(5))
    document["services"]["song_service"]["timeout_ms"] = -1
    document["services"]["song_service"]["allow"][0]["rate_limit"]["rps"] = 0
    document["services"]["chat_service"]["identity"]["key"] = "missing-key"
    with pytest.raises(PolicyError) as refused:
        validate_policy(document, ENVIRON)
    assert refused.value.errors == [
        "version: must be 1",
        "keys.song-enc-v1.secret: must be 32 bytes for aes-256-gcm, not 5",
        f"{SONG}.timeout_ms: must be at least 1",
        f"{RULE}.rate_limit.rps: must be greater than 0",
        "services.chat_service.identity.key: unknown key 'missing-key'",
    ]
    # the exception text lists them all too, one a line
    for line in refused.value.errors:
        assert line in str(refused.value)


def test_key_that_failed_its_own_check_is_not_also_reported_unknown(pem_path: Path) -> None:
    document = full_document(pem_path)
    document["keys"]["song-enc-v1"]["secret"] = "base64:%%%"
    with pytest.raises(PolicyError) as refused:
        validate_policy(document, ENVIRON)
    assert refused.value.errors == ["keys.song-enc-v1.secret: base64: value is not valid base64"]


def test_top_level_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(PolicyError) as refused:
        load_policy("- version: 1\n")
    assert refused.value.errors == ["policy: must be a mapping with version, keys and services"]


def test_empty_file_is_refused() -> None:
    with pytest.raises(PolicyError) as refused:
        load_policy("")
    assert refused.value.errors == ["policy: must be a mapping with version, keys and services"]


def test_yaml_syntax_error_names_the_line() -> None:
    text = "version: 1\nservices:\n  song_service: {timeout_ms: 5\n  chat_service: {}\n"
    with pytest.raises(PolicyError) as refused:
        load_policy(text)
    [error] = refused.value.errors
    assert error.startswith("yaml: ")
    assert re.search(r" at line 4, column \d+$", error), error


def test_key_written_twice_in_yaml_is_refused_with_its_line() -> None:
    text = "version: 1\nservices:\n  song_service: {}\n  chat_service: {}\n  song_service: {}\n"
    with pytest.raises(PolicyError) as refused:
        load_policy(text)
    assert refused.value.errors == ["yaml: found duplicate key 'song_service' at line 5, column 3"]


def test_file_secret_larger_than_a_key_file_is_refused(tmp_path: Path, pem_path: Path) -> None:
    big = tmp_path / "big.key"
    big.write_bytes(b"A" * 100_000)
    document = full_document(pem_path)
    document["keys"]["song-enc-v1"]["secret"] = f"file:{big}"
    with pytest.raises(PolicyError) as refused:
        validate_policy(document, ENVIRON)
    assert refused.value.errors == [
        f"keys.song-enc-v1.secret: file {big} is larger than 65536 bytes"]


# --- secrecy -----------------------------------------------------------------------------


def _renderings(secret: bytes) -> list[str]:
    """Ways a secret could show up in text: base64, hex (both cases), raw."""
    encoded = base64.b64encode(secret).decode()
    return [
        encoded.rstrip("="),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
        secret.hex(),
        secret.hex().upper(),
        secret.decode("latin-1"),
        repr(secret)[2:-1],
    ]


def _assert_no_secret_in(text: str) -> None:
    for secret in ALL_SECRETS:
        for rendering in _renderings(secret):
            assert rendering not in text, "secret material leaked into text"


def test_no_secret_appears_in_repr_str_or_any_error(pem_path: Path) -> None:
    policy = validate_policy(full_document(pem_path), ENVIRON)
    texts = [repr(policy), str(policy)]
    for key in policy.keys.values():
        texts += [repr(key), str(key), f"{key}", f"{key!r}"]

    # Documents that fail next to (or because of) the secrets must not echo them.
    wrong_length = SONG_ENC_SECRET + b"\x00"
    failing: list[Mutation] = [
        put("keys.song-enc-v1.secret", b64(wrong_length)),
        put("keys.chat-id-v1.type", "aes-256-gcm"),  # HMAC secret, now of the wrong length
        put("keys.song-enc-v1.type", "ed25519"),  # secret field is now unknown
        put("keys.song-enc-v1.type", "hmac-sha256"),
        put("keys.song-id-v1.type", "aes-256-gcm"),
        put("keys.song-enc-v1.secret", b64(SONG_ENC_SECRET) + "*"),
        put("keys.song-enc-v1.secret", b64(SONG_ENC_SECRET)[7:]),
        put("keys.song-enc-v1", {"type": "aes-256-gcm", "secret": SONG_ENC_SECRET}),
        put("keys.song-id-v1.private", b64(SONG_ID_SEED + b"\x01")),
        put("version", 0),
    ]
    environ = {"CHAT_ID_KEY": ENVIRON["CHAT_ID_KEY"],
               "BAD": base64.b64encode(SONG_ENC_SECRET).decode() + "!"}
    failing.append(put("keys.chat-id-v1.secret", "env:BAD"))
    for mutation in failing:
        document = full_document(pem_path)
        mutation(document)
        with pytest.raises(PolicyError) as refused:
            validate_policy(document, environ)
        texts += [str(refused.value), repr(refused.value), *refused.value.errors]
        assert refused.value.__cause__ is None
        assert refused.value.__context__ is None or not isinstance(
            refused.value.__context__, PolicyError)
    _assert_no_secret_in("\n".join(texts))


def test_the_leak_check_itself_detects_a_secret() -> None:
    with pytest.raises(AssertionError):
        _assert_no_secret_in(f"oops {SONG_ENC_SECRET.hex()}")
    with pytest.raises(AssertionError):
        _assert_no_secret_in("oops " + base64.b64encode(CHAT_ID_SECRET).decode())


# --- property: mutated documents never crash the validator --------------------------------

_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from([
        "*", "/demo.v1.Echo/*", "gzip", "aes-256-gcm", "ed25519", "hmac-sha256",
        "base64:", "base64:AAAA", "env:", "env:CHAT_ID_KEY", "file:", "file:/nonexistent",
        "song-enc-v1", "song-id-v1", "chat-id-v1", "song_service", "chat_service",
        "127.0.0.1:0", "[::1]:9101",
    ]),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), inner, max_size=3),
    ),
    max_leaves=6,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found: list[tuple[Any, ...]] = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


@pytest.fixture(scope="module")
def base_document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return full_document(write_song_pem(tmp_path_factory.mktemp("keys")))


_EDITS = st.lists(
    st.tuples(st.integers(min_value=0), st.sampled_from(["replace", "delete", "add"]),
              _VALUES, st.text(max_size=8)),
    min_size=1, max_size=3,
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=_EDITS)
def test_mutated_documents_only_ever_raise_policy_error(
    base_document: dict[str, Any], edits: list[tuple[int, str, Any, str]]
) -> None:
    document = copy.deepcopy(base_document)
    for choice, action, value, new_name in edits:
        paths = _paths(document)
        if not paths:
            break
        path = paths[choice % len(paths)]
        parent: Any = document
        for segment in path[:-1]:
            parent = parent[segment]
        last = path[-1]
        if action == "replace":
            parent[last] = value
        elif action == "delete":
            del parent[last]
        elif isinstance(parent, dict):
            parent[new_name] = value
        else:
            parent.insert(last, value)
    try:
        validate_policy(document, ENVIRON)
    except PolicyError as refused:
        assert refused.errors
        assert all(isinstance(line, str) and line for line in refused.errors)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=200))
def test_any_text_either_loads_or_raises_policy_error(text: str) -> None:
    try:
        load_policy(text, environ={})
    except PolicyError as refused:
        assert refused.errors


def test_contract_example_sample_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    pem = Ed25519PrivateKey.from_private_bytes(SONG_ID_SEED).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    monkeypatch.setenv("CHAT_ID_KEY", ENVIRON["CHAT_ID_KEY"])
    monkeypatch.setenv("SONG_ID_PEM", pem.decode())
    sample = Path(__file__).parent / "support" / "policy_samples" / "contract_example.yaml"
    policy = load_policy(sample.read_text())
    assert policy.keys["song-enc-v1"].secret == bytes(range(1, 33))
    assert policy.keys["song-id-v1"].secret == SONG_ID_SEED
    assert policy.keys["chat-id-v1"].secret == CHAT_ID_SECRET
    song = policy.services["song_service"]
    assert song.allow == (
        AllowRule("chat_service", ("/demo.v1.Echo/*",), RateLimit(100.0, 20)),)
    assert (song.timeout_ms, song.compress) == (2000, Compression("gzip", 1024))
