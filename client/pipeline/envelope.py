"""The sealed message and the signed call header: keys, wire form, signed bytes.

Everything here is bytes in, bytes out. Keys are compiled once per policy snapshot (the
AEAD and HMAC objects are built here, not per call or per message). What is signed:

- a call header: ``CALL_CONTEXT + header`` (the serialized `CallHeader` exactly as sent);
- a message: ``MESSAGE_CONTEXT + lp(method) + lp(header) + payload``, where ``lp`` is a
  4-byte big-endian length prefix and ``header`` the serialized `MessageHeader` as sent.

The AEAD's associated data is ``AAD_CONTEXT + lp(method) + lp(caller) + lp(callee) +
lp(call_id) + direction + sequence``, so a sealed message moved to another method, call,
stream position or direction does not decrypt.

Wire form: the serialized `Envelope` in field 536870911 of an otherwise empty message (the
`Sealed` message of envelope.proto). Any generated message class keeps that field as an
unknown field and writes it back byte for byte.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from google.protobuf.message import DecodeError

from fastproxy.pipeline.reasons import FastProxyError, Reason
from fastproxy.v1 import envelope_pb2 as epb

ENVELOPE_VERSION = 1
CALL_HEADER_VERSION = 1
CALL_METADATA_KEY = "fastproxy-call-bin"

CALL_CONTEXT = b"fastproxy-call-v1\x00"
MESSAGE_CONTEXT = b"fastproxy-msg-v1\x00"
AAD_CONTEXT = b"fastproxy-aad-v1\x00"

NONCE_BYTES = 12
CALL_ID_BYTES = 16
SEALED_FIELD_NUMBER = 536870911
# The tag of field 536870911, wire type 2 (length-delimited), as a varint.
SEALED_TAG = bytes((0xFA, 0xFF, 0xFF, 0xFF, 0x0F))
# Room for the envelope around a payload of the maximum size when checking sealed sizes.
ENVELOPE_OVERHEAD_BYTES = 64 * 1024

_LEN = struct.Struct(">I")
_SEQ = struct.Struct(">Q")


def length_prefixed(data: bytes) -> bytes:
    return _LEN.pack(len(data)) + data


# --- keys ---------------------------------------------------------------------------------


class AeadKey:
    """An encryption key with its AEAD object, built once per snapshot."""

    __slots__ = ("_aead", "algorithm", "key_id")

    def __init__(self, key_id: str, algorithm: int, secret: bytes) -> None:
        if len(secret) != 32:
            raise ValueError(f"key {key_id!r}: an encryption key must be 32 bytes")
        self.key_id = key_id
        self.algorithm = algorithm
        self._aead: AESGCM | ChaCha20Poly1305
        if algorithm == epb.ALGORITHM_AES_256_GCM:
            self._aead = AESGCM(secret)
        elif algorithm == epb.ALGORITHM_CHACHA20_POLY1305:
            self._aead = ChaCha20Poly1305(secret)
        else:
            raise ValueError(f"key {key_id!r}: unknown AEAD algorithm {algorithm}")

    def encrypt(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return self._aead.encrypt(nonce, plaintext, aad)

    def decrypt(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        if len(nonce) != NONCE_BYTES:
            raise FastProxyError(Reason.UNAUTHENTICATED, "message nonce has the wrong length")
        try:
            return self._aead.decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise FastProxyError(
                Reason.UNAUTHENTICATED, "message does not decrypt for this call and position"
            ) from None

    def __repr__(self) -> str:
        return f"AeadKey({self.key_id!r}, algorithm={self.algorithm})"


class SigningKey:
    """An identity key that signs (HMAC-SHA256 secret or Ed25519 private seed)."""

    __slots__ = ("_ed25519", "_hmac", "key_id", "key_id_bytes", "signature_type")

    def __init__(self, key_id: str, signature_type: int, secret: bytes) -> None:
        self.key_id = key_id
        self.key_id_bytes = key_id.encode()
        self.signature_type = signature_type
        self._hmac: hmac.HMAC | None = None
        self._ed25519: Ed25519PrivateKey | None = None
        if signature_type == epb.SIGNATURE_HMAC_SHA256:
            self._hmac = hmac.new(secret, digestmod=hashlib.sha256)
        elif signature_type == epb.SIGNATURE_ED25519:
            self._ed25519 = Ed25519PrivateKey.from_private_bytes(secret)
        else:
            raise ValueError(f"key {key_id!r}: unknown signature type {signature_type}")

    def sign(self, parts: Sequence[bytes]) -> bytes:
        if self._hmac is not None:
            mac = self._hmac.copy()
            for part in parts:
                mac.update(part)
            return mac.digest()
        assert self._ed25519 is not None
        return self._ed25519.sign(b"".join(parts))

    def __repr__(self) -> str:
        return f"SigningKey({self.key_id!r}, signature_type={self.signature_type})"


class VerifyKey:
    """An identity key that verifies (HMAC-SHA256 secret or Ed25519 public key)."""

    __slots__ = ("_ed25519", "_hmac", "key_id", "signature_type")

    def __init__(self, key_id: str, signature_type: int, material: bytes) -> None:
        self.key_id = key_id
        self.signature_type = signature_type
        self._hmac: hmac.HMAC | None = None
        self._ed25519: Ed25519PublicKey | None = None
        if signature_type == epb.SIGNATURE_HMAC_SHA256:
            self._hmac = hmac.new(material, digestmod=hashlib.sha256)
        elif signature_type == epb.SIGNATURE_ED25519:
            self._ed25519 = Ed25519PublicKey.from_public_bytes(material)
        else:
            raise ValueError(f"key {key_id!r}: unknown signature type {signature_type}")

    def verify(self, parts: Sequence[bytes], signature: bytes) -> bool:
        if self._hmac is not None:
            mac = self._hmac.copy()
            for part in parts:
                mac.update(part)
            return hmac.compare_digest(mac.digest(), signature)
        assert self._ed25519 is not None
        try:
            self._ed25519.verify(signature, b"".join(parts))
        except InvalidSignature:
            return False
        return True

    def __repr__(self) -> str:
        return f"VerifyKey({self.key_id!r}, signature_type={self.signature_type})"


def pick_verify_key(keys: dict[str, VerifyKey], key_id: bytes, what: str) -> VerifyKey:
    key = keys.get(key_id.decode(errors="replace"))
    if key is None:
        raise FastProxyError(Reason.UNAUTHENTICATED, f"{what} is signed with an unknown key")
    return key


# --- the sealed wire form -----------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def frame_envelope(envelope: epb.Envelope) -> bytes:
    """The wire form: `Sealed { envelope = ... }`, written without building a `Sealed`."""
    body = envelope.SerializeToString()
    return b"".join((SEALED_TAG, _varint(len(body)), body))


def parse_envelope(data: bytes, max_bytes: int) -> epb.Envelope:
    """Reads the envelope out of sealed bytes; MALFORMED when they are not a sealed message."""
    if len(data) > max_bytes + ENVELOPE_OVERHEAD_BYTES:
        raise FastProxyError(
            Reason.MALFORMED, f"sealed message exceeds the limit of {max_bytes} bytes"
        )
    try:
        sealed = epb.Sealed.FromString(data)
    except DecodeError:
        raise FastProxyError(Reason.MALFORMED, "not a sealed message") from None
    if not sealed.HasField("envelope"):
        raise FastProxyError(Reason.MALFORMED, "not a sealed message (no envelope)")
    envelope = sealed.envelope
    if envelope.version != ENVELOPE_VERSION:
        raise FastProxyError(
            Reason.MALFORMED, f"unsupported envelope version {envelope.version}"
        )
    return envelope


def parse_message_header(data: bytes) -> epb.MessageHeader:
    try:
        return epb.MessageHeader.FromString(data)
    except DecodeError:
        raise FastProxyError(Reason.MALFORMED, "message header cannot be parsed") from None


def message_signed_parts(method_prefix: bytes, header: bytes, payload: bytes) -> tuple[
        bytes, bytes, bytes]:
    """`method_prefix` is ``MESSAGE_CONTEXT + lp(method)``, computed once per call."""
    return (method_prefix, _LEN.pack(len(header)) + header, payload)


def message_method_prefix(method: str) -> bytes:
    return MESSAGE_CONTEXT + length_prefixed(method.encode())


def aad_prefix(method: str, caller: str, callee: str, call_id: bytes, direction: int) -> bytes:
    """Associated data up to the sequence number; computed once per call and direction."""
    return b"".join((
        AAD_CONTEXT,
        length_prefixed(method.encode()),
        length_prefixed(caller.encode()),
        length_prefixed(callee.encode()),
        length_prefixed(call_id),
        bytes((direction,)),
    ))


def aad_for(prefix: bytes, sequence: int) -> bytes:
    return prefix + _SEQ.pack(sequence)


# --- the call header ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallHeaderFields:
    caller: str
    callee: str
    method: str
    call_id: bytes
    timestamp_ms: int
    nonce: bytes


def sign_call_header(fields: CallHeaderFields, key: SigningKey) -> bytes:
    """The value of the `fastproxy-call-bin` metadata entry."""
    header = epb.CallHeader(
        caller=fields.caller,
        callee=fields.callee,
        method=fields.method,
        call_id=fields.call_id,
        timestamp_ms=fields.timestamp_ms,
        nonce=fields.nonce,
        signature_type=key.signature_type,
    ).SerializeToString()
    signed = epb.SignedCallHeader(
        version=CALL_HEADER_VERSION,
        sig_key_id=key.key_id_bytes,
        header=header,
        signature=key.sign((CALL_CONTEXT, header)),
    )
    return bytes(signed.SerializeToString())


def read_signed_call_header(raw: bytes) -> epb.SignedCallHeader:
    """Parses the metadata value; MALFORMED when it is not a signed call header."""
    try:
        signed = epb.SignedCallHeader.FromString(raw)
    except DecodeError:
        raise FastProxyError(Reason.MALFORMED, "call header cannot be parsed") from None
    if signed.version != CALL_HEADER_VERSION:
        raise FastProxyError(Reason.MALFORMED, f"unsupported call header version {signed.version}")
    return signed


def claimed_caller(signed: epb.SignedCallHeader) -> str:
    """The caller a call header names, NOT verified ("" if unreadable): only to tell a
    caller that no rule admits from one whose signature is wrong."""
    try:
        return str(epb.CallHeader.FromString(signed.header).caller)
    except DecodeError:
        return ""


def verify_call_header(signed: epb.SignedCallHeader, keys: dict[str, VerifyKey]) -> (
        epb.CallHeader):
    """Checks the signature over the header bytes as received, then parses them."""
    key = pick_verify_key(keys, signed.sig_key_id, "call header")
    if not key.verify((CALL_CONTEXT, signed.header), signed.signature):
        raise FastProxyError(Reason.UNAUTHENTICATED, "call header signature does not verify")
    try:
        header = epb.CallHeader.FromString(signed.header)
    except DecodeError:
        raise FastProxyError(Reason.MALFORMED, "call header cannot be parsed") from None
    if header.signature_type != key.signature_type:
        raise FastProxyError(Reason.UNAUTHENTICATED, "call header names another signature type")
    return header
