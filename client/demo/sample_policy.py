"""The demo's policy, with fresh keys each run.

chat_service calls song_service (demo.v1.Echo and demo.v1.Catalog): requests signed with an
HMAC key, responses with an ed25519 key, payloads encrypted with AES-256-GCM and gzipped
above 1 KiB. Catalog writes have no rule (denied); Catalog counts are limited to one a
second (rate limited). analytics_service may only count.
"""

from __future__ import annotations

import base64
import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def _secret(size: int = 32) -> str:
    return "base64:" + base64.b64encode(os.urandom(size)).decode()


def _ed25519_seed() -> str:
    seed = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
        serialization.NoEncryption())
    return "base64:" + base64.b64encode(seed).decode()


def demo_policy(in_proxy: str) -> str:
    return f"""\
version: 1
keys:
  song-enc-v1: {{type: aes-256-gcm, secret: "{_secret()}"}}
  song-id-v1: {{type: ed25519, private: "{_ed25519_seed()}"}}
  chat-id-v1: {{type: hmac-sha256, secret: "{_secret()}"}}
  analytics-id-v1: {{type: hmac-sha256, secret: "{_secret()}"}}
services:
  song_service:
    grpc_services: [demo.v1.Echo, demo.v1.Catalog]
    endpoints: ["{in_proxy}"]
    identity: {{key: song-id-v1}}
    encrypt: {{key: song-enc-v1}}
    compress: {{algorithm: gzip, min_bytes: 1024}}
    timeout_ms: 2000
    allow:
      - caller: "*"
        methods: ["/demo.v1.Catalog/Count"]
        rate_limit: {{rps: 1, burst: 1}}
      - caller: chat_service
        methods: ["/demo.v1.Echo/*", "/demo.v1.Catalog/GetItem", "/demo.v1.Catalog/ListItems"]
        rate_limit: {{rps: 500, burst: 100}}
  chat_service:
    identity: {{key: chat-id-v1}}
  analytics_service:
    identity: {{key: analytics-id-v1}}
"""
