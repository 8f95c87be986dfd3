"""Writes tests/vectors/v2.json: protocol version 2 computed from docs/protocol.md alone.

This is a second implementation of the spec, written from its text with the primitives of
`cryptography` and the generated protobuf classes, and sharing no code with
`client/pipeline/`; the test `tests/test_protocol_vectors.py` checks the implementation
against what this writes. Run: `python tests/vectors/generate_v2.py` (the output is
deterministic: every random input is fixed here).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fastproxy.v1 import session_pb2 as spb


def fixed(label: str, size: int) -> bytes:
    """Deterministic 'random' bytes for an input of the vectors."""
    return hashlib.sha256(b"fastproxy-v2 vector " + label.encode()).digest()[:size]


def lp(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def hkdf_expand(prk: bytes, info: bytes) -> bytes:  # one block is all a 32-byte key needs
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def nonce(call: int, position: int) -> bytes:
    return call.to_bytes(8, "big") + position.to_bytes(4, "big")


def digest(metadata: list[tuple[str, str]]) -> bytes:
    hop = {"traceparent", "user-agent", "te", "content-type"}
    secret = {"authorization", "proxy-authorization", "cookie", "set-cookie"}
    ours = {"fastproxy-call-bin", "fastproxy-head-bin", "fastproxy-end-bin",
            "fastproxy-hello-bin", "fastproxy-session", "fastproxy-kind"}
    kept = sorted(((k, v) for k, v in metadata if k not in hop and k not in secret
                   and k not in ours), key=lambda e: e[0])
    out = hashlib.sha256(b"fastproxy-v2 metadata\x00")
    for key, value in kept:
        out.update(lp(key.encode()) + lp(value.encode()))
    return out.digest()


def main() -> None:
    caller, callee = "chat_service", "song_service"
    caller_secret = fixed("chat-id secret", 32)
    callee_seed = fixed("song-id seed", 32)
    psk = fixed("song-enc secret", 32)
    client_ephemeral = fixed("client ephemeral", 32)
    server_ephemeral = fixed("server ephemeral", 32)
    client_random = fixed("client random", 32)
    session_id = fixed("session id", 16)
    now_ms = 1_765_000_000_000

    # Section 2: the pair key the callee holds of the caller's HMAC identity.
    pair = hkdf_expand(hkdf_extract(b"fastproxy-v2 pair", caller_secret),
                       lp(caller.encode()) + lp(callee.encode()))
    callee_key = Ed25519PrivateKey.from_private_bytes(callee_seed)

    # Section 3: the handshake.
    c_eph = X25519PrivateKey.from_private_bytes(client_ephemeral)
    s_eph = X25519PrivateKey.from_private_bytes(server_ephemeral)
    hello = spb.ClientHello(version=2, caller=caller, callee=callee, identity_key="chat-id",
                            ephemeral=c_eph.public_key().public_bytes_raw(),
                            random=client_random, timestamp_ms=now_ms,
                            suite=spb.AEAD_SUITE_AES_256_GCM, psk="song-enc").SerializeToString()
    signed_client = spb.SignedHello(hello=hello, signature=hmac.new(
        pair, b"fastproxy-v2 client hello\x00" + hello, hashlib.sha256).digest()
    ).SerializeToString()
    answer = spb.ServerHello(version=2, session_id=session_id,
                             ephemeral=s_eph.public_key().public_bytes_raw(),
                             identity_key="song-id", lifetime_s=600, max_calls=1 << 32,
                             client_hello_digest=hashlib.sha256(signed_client).digest(),
                             ).SerializeToString()
    signed_server = spb.SignedHello(hello=answer, signature=callee_key.sign(
        b"fastproxy-v2 server hello\x00" + answer)).SerializeToString()
    shared = c_eph.exchange(X25519PublicKey.from_public_bytes(
        s_eph.public_key().public_bytes_raw()))
    th = hashlib.sha256(signed_client + signed_server).digest()
    prk = hkdf_extract(th, shared + psk)
    k_req = hkdf_expand(prk, b"fastproxy-v2 request key")
    k_resp = hkdf_expand(prk, b"fastproxy-v2 response key")
    req, resp = AESGCM(k_req), AESGCM(k_resp)

    # Section 4: records of call 1.
    call = 1
    method = "/demo.v1.Echo/Unary"
    metadata = [("x-a", "1"), ("authorization", "Bearer t"), ("traceparent", "00-abc")]
    head = spb.CallHead(method=method, timestamp_ms=now_ms,
                        metadata_digest=digest(metadata),
                        secret=[spb.MetadataPair(key="authorization", value=b"Bearer t")],
                        ).SerializeToString()
    prefix = bytes((2, 1, 0)) + session_id + call.to_bytes(8, "big")
    call_record = prefix + req.encrypt(nonce(call, 0), head, prefix)
    data_header = bytes((2, 2, 4))  # DATA, FINAL, no codec
    data_record = data_header + req.encrypt(nonce(call, 1), b"hello", data_header)
    clear_header = bytes((2, 2, 8))  # DATA, CLEAR
    clear_record = (clear_header + b"hello"
                    + req.encrypt(nonce(call, 1), b"", clear_header + b"hello"))
    end_header = bytes((2, 3, 0))
    end_record = end_header + req.encrypt(nonce(call, 2), (1).to_bytes(4, "big"), end_header)
    response_head = spb.ResponseHead(metadata_digest=digest([("x-h", "v")])).SerializeToString()
    head_header = bytes((2, 4, 0))
    head_record = head_header + resp.encrypt(nonce(call, 0), response_head, head_header)
    response_header = bytes((2, 2, 0))
    response_record = response_header + resp.encrypt(nonce(call, 1), b"world", response_header)
    status = spb.ResponseEnd(code=0, details_digest=hashlib.sha256(b"").digest(),
                             trailers_digest=digest([("x-t", "t")]), messages=1,
                             head=True).SerializeToString()
    status_header = bytes((2, 5, 0))
    status_record = status_header + resp.encrypt(nonce(call, 2), status, status_header)

    out = {
        "about": "protocol version 2 (docs/protocol.md), written by generate_v2.py",
        "inputs": {
            "caller": caller, "callee": callee, "caller_key": "chat-id",
            "caller_hmac_secret": caller_secret.hex(), "callee_key": "song-id",
            "callee_ed25519_seed": callee_seed.hex(), "psk_key": "song-enc",
            "psk": psk.hex(), "client_ephemeral": client_ephemeral.hex(),
            "server_ephemeral": server_ephemeral.hex(), "client_random": client_random.hex(),
            "session_id": session_id.hex(), "now_ms": now_ms, "lifetime_s": 600,
            "max_calls": 1 << 32, "call_number": call, "method": method,
            "request_metadata": metadata, "request": "hello", "response": "world",
            "response_headers": [["x-h", "v"]], "response_trailers": [["x-t", "t"]],
        },
        "outputs": {
            "pair_key": pair.hex(), "signed_client_hello": signed_client.hex(),
            "signed_server_hello": signed_server.hex(), "transcript": th.hex(),
            "request_key": k_req.hex(), "response_key": k_resp.hex(),
            "request_metadata_digest": digest(metadata).hex(),
            "call_record": call_record.hex(), "data_final_record": data_record.hex(),
            "data_clear_record": clear_record.hex(), "end_record_after_one": end_record.hex(),
            "head_record": head_record.hex(), "response_record": response_record.hex(),
            "status_record": status_record.hex(),
        },
    }
    path = Path(__file__).with_name("v2.json")
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
