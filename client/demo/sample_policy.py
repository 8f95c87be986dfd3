"""The sample policy of `fastproxy demo` and of docker/compose.yaml: one set of rules, with the
key material given as references (inline `base64:` for the demo, `file:` for containers).

chat_service calls song_service (demo.v1.Echo and demo.v1.Catalog): requests signed with an
HMAC key, responses with an ed25519 key, payloads encrypted with AES-256-GCM and gzipped
above 1 KiB. Catalog writes have no rule (denied); Catalog counts are limited to one a
second for every caller (rate limited). analytics_service may only count. reports_service's
rule is in audit mode (being narrowed to Count): its other Catalog calls pass, and the
in-proxy logs each as a call that would be denied.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping, Sequence

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# key name -> its line under `keys:`, with the secret reference left to fill in
KEY_TEMPLATES = {
    "song-enc-v1": '{{type: aes-256-gcm, secret: "{ref}"}}',
    "song-id-v1": '{{type: ed25519, private: "{ref}"}}',
    "chat-id-v1": '{{type: hmac-sha256, secret: "{ref}"}}',
    "analytics-id-v1": '{{type: hmac-sha256, secret: "{ref}"}}',
    "reports-id-v1": '{{type: hmac-sha256, secret: "{ref}"}}',
}


def new_secret(key_name: str) -> bytes:
    """Fresh material for one of KEY_TEMPLATES: a raw ed25519 seed or 32 random bytes."""
    if key_name == "song-id-v1":
        return Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption())
    return os.urandom(32)


def sample_policy(refs: Mapping[str, str], endpoints: Sequence[str] = ()) -> str:
    """The policy with each key's secret reference from `refs`; `endpoints` are
    song_service's static endpoints (none: registration alone)."""
    keys = "\n".join(f"  {name}: {template.format(ref=refs[name])}"
                     for name, template in KEY_TEMPLATES.items())
    endpoint_list = ", ".join(f'"{e}"' for e in endpoints)
    return f"""\
version: 1
keys:
{keys}
services:
  song_service:
    grpc_services: [demo.v1.Echo, demo.v1.Catalog]
    endpoints: [{endpoint_list}]
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
      - caller: reports_service
        methods: ["/demo.v1.Catalog/Count"]
        mode: audit
  chat_service:
    identity: {{key: chat-id-v1}}
  analytics_service:
    identity: {{key: analytics-id-v1}}
  reports_service:
    identity: {{key: reports-id-v1}}
"""


def demo_policy(in_proxy: str) -> str:
    """The demo's policy: fresh keys inline, the in-proxy as song_service's endpoint."""
    refs = {name: "base64:" + base64.b64encode(new_secret(name)).decode()
            for name in KEY_TEMPLATES}
    return sample_policy(refs, [in_proxy])
