"""A policy for Center tests: fresh random keys, and YAML text with a few knobs to turn.

Services: song_service (called by chat_service), weather_service (called by radar_service,
unrelated to song and chat) and lonely_service (no rule mentions it).
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fastproxy.v1 import center_pb2, policy_pb2

SONG_ENDPOINT = "127.0.0.1:9101"


def _random_key() -> bytes:
    return os.urandom(32)


@dataclass(frozen=True)
class PolicyKeys:
    """Key material of the test policy (raw bytes; ed25519 entries are private seeds)."""

    song_id: bytes = field(default_factory=_random_key)
    song_enc: bytes = field(default_factory=_random_key)
    chat_id: bytes = field(default_factory=_random_key)
    weather_id: bytes = field(default_factory=_random_key)
    weather_enc: bytes = field(default_factory=_random_key)
    radar_id: bytes = field(default_factory=_random_key)

    def secrets(self) -> dict[str, bytes]:
        """Every secret in the policy, by key name."""
        return {"song-id": self.song_id, "song-enc": self.song_enc, "chat-id": self.chat_id,
                "weather-id": self.weather_id, "weather-enc": self.weather_enc,
                "radar-id": self.radar_id}

    @staticmethod
    def public_of(seed: bytes) -> bytes:
        return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _b64(material: bytes) -> str:
    return "base64:" + base64.b64encode(material).decode()


def policy_yaml(keys: PolicyKeys, *, song_timeout_ms: int = 2000,
                weather_timeout_ms: int = 1000) -> str:
    """The test policy; each knob changes what one audience sees."""
    return f"""\
version: 1
keys:
  song-id: {{type: ed25519, private: "{_b64(keys.song_id)}"}}
  song-enc: {{type: aes-256-gcm, secret: "{_b64(keys.song_enc)}"}}
  chat-id: {{type: hmac-sha256, secret: "{_b64(keys.chat_id)}"}}
  weather-id: {{type: ed25519, private: "{_b64(keys.weather_id)}"}}
  weather-enc: {{type: chacha20-poly1305, secret: "{_b64(keys.weather_enc)}"}}
  radar-id: {{type: hmac-sha256, secret: "{_b64(keys.radar_id)}"}}
services:
  song_service:
    grpc_services: [demo.v1.Echo]
    endpoints: ["{SONG_ENDPOINT}"]
    identity: {{key: song-id}}
    encrypt: {{key: song-enc}}
    timeout_ms: {song_timeout_ms}
    allow:
      - caller: chat_service
        methods: ["/demo.v1.Echo/*"]
        rate_limit: {{rps: 100, burst: 20}}
  chat_service:
    identity: {{key: chat-id}}
  weather_service:
    grpc_services: [demo.v1.Weather]
    identity: {{key: weather-id}}
    encrypt: {{key: weather-enc}}
    timeout_ms: {weather_timeout_ms}
    allow:
      - caller: radar_service
        methods: ["*"]
  radar_service:
    identity: {{key: radar-id}}
  lonely_service:
    grpc_services: [demo.v1.Lonely]
"""


def apply(stub: object, yaml_text: str, comment: str = "",
          metadata: tuple[tuple[str, str], ...] = ()) -> center_pb2.ApplyPolicyResponse:
    """ApplyPolicy through a CenterStub."""
    response: center_pb2.ApplyPolicyResponse = stub.ApplyPolicy(  # type: ignore[attr-defined]
        center_pb2.ApplyPolicyRequest(yaml=yaml_text, comment=comment), timeout=10,
        metadata=metadata)
    return response


def parse(signed: policy_pb2.SignedSnapshot) -> policy_pb2.PolicySnapshot:
    return policy_pb2.PolicySnapshot.FromString(signed.snapshot)


def service_in(snapshot: policy_pb2.PolicySnapshot, name: str) -> policy_pb2.Service:
    for service in snapshot.services:
        if service.name == name:
            return service
    raise AssertionError(f"service {name} not in snapshot (has "
                         f"{[s.name for s in snapshot.services]})")
