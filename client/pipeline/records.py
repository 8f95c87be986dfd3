"""Records of protocol version 2 (docs/protocol.md, section 4): their header, how each is
sealed and opened at its position, and the carrier that makes a record a gRPC message.

`Direction` is one direction of one call: its session key, the call number and the next
position. Sealing and opening advance the position, so a record is opened only where it was
sealed; nothing here knows about gRPC.
"""

from __future__ import annotations

from fastproxy.pipeline.compression import Compressor, decompress
from fastproxy.pipeline.keys import TAG_BYTES, Aead, nonce
from fastproxy.pipeline.reasons import FastProxyError, Reason

VERSION = 2
CALL, DATA, END, HEAD, STATUS = 1, 2, 3, 4, 5
CODEC_MASK = 0x03
FINAL = 0x04  # the last message of its direction
CLEAR = 0x08  # authenticated, not encrypted
SESSION_ID_BYTES = 16
CALL_PREFIX_BYTES = 3 + SESSION_ID_BYTES + 8
# The tag of protobuf field 536870911, length-delimited, as a varint: a record in this field
# is an unknown field of any message class, kept and written back unchanged.
CARRIER_TAG = bytes((0xFA, 0xFF, 0xFF, 0xFF, 0x0F))
# Room for the carrier, header and tag around a message of the largest allowed size.
RECORD_OVERHEAD_BYTES = 64
V1_MARK = 0x08  # a version-1 envelope or call header starts with protobuf field 1, varint
_NAMES = {CALL: "CALL", DATA: "DATA", END: "END", HEAD: "HEAD", STATUS: "STATUS"}


def header(record_type: int, flags: int = 0) -> bytes:
    return bytes((VERSION, record_type, flags))


# every header a record may carry, made once: _HEADERS[record_type][flags]
_HEADERS = tuple(tuple(header(record_type, flags) for flags in range(16))
                 for record_type in range(STATUS + 1))


def check_version(record: bytes, what: str) -> None:
    """UNAUTHENTICATED naming the version of a record this node does not speak."""
    if record and record[0] == VERSION:
        return
    if record and record[0] == V1_MARK:
        raise FastProxyError(Reason.UNAUTHENTICATED,
                             f"{what} is of protocol version 1, which is not spoken here: "
                             "this node speaks version 2")
    raise FastProxyError(Reason.UNAUTHENTICATED, f"{what} is not of protocol version 2")


# --- the carrier ---------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    if value < 0x4000:  # one or two bytes: every message up to 16 KiB
        return bytes((value,)) if value < 0x80 else bytes(((value & 0x7F) | 0x80, value >> 7))
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def carry(record: bytes) -> bytes:
    """A record as a gRPC message: field 536870911 of an otherwise empty message."""
    return b"".join((CARRIER_TAG, _varint(len(record)), record))


def uncarry(data: bytes, max_bytes: int) -> bytes:
    """The record a gRPC message carries; MALFORMED when it carries none, or is too large."""
    if len(data) > max_bytes + RECORD_OVERHEAD_BYTES:
        raise FastProxyError(Reason.MALFORMED,
                             f"sealed message exceeds the limit of {max_bytes} bytes")
    if not data.startswith(CARRIER_TAG):
        raise FastProxyError(Reason.MALFORMED, "not a sealed message")
    length, shift, at = 0, 0, len(CARRIER_TAG)
    while True:
        if at >= len(data) or shift > 35:
            raise FastProxyError(Reason.MALFORMED, "not a sealed message (bad length)")
        byte = data[at]
        at += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    if at + length != len(data):
        raise FastProxyError(Reason.MALFORMED, "not a sealed message (length differs)")
    return data[at:]


# --- one direction of one call ---------------------------------------------------------------


class Direction:
    """The records of one call in one direction: sealed or opened in order of position."""

    __slots__ = ("_aead", "call_number", "clear", "ended", "max_bytes", "position")

    def __init__(self, aead: Aead, call_number: int, *, clear: bool, max_bytes: int,
                 position: int = 1) -> None:
        self._aead = aead
        self.call_number = call_number
        self.clear = clear
        self.max_bytes = max_bytes
        self.position = position
        self.ended = False

    def seal(self, record_type: int, plaintext: bytes, flags: int = 0,
             position: int | None = None) -> bytes:
        """A record at the next position (or at `position`, for HEAD at 0)."""
        at = self.position if position is None else position
        if position is None:
            self.position += 1
        if self.clear and record_type == DATA:
            flags |= CLEAR
        head = (_HEADERS[record_type][flags] if 0 <= record_type <= STATUS and 0 <= flags < 16
                else header(record_type, flags))
        if self.clear and record_type == DATA:
            tag = self._aead.seal(nonce(self.call_number, at), b"", head + plaintext)
            return b"".join((head, plaintext, tag))
        return head + self._aead.seal(nonce(self.call_number, at), plaintext, head)

    def open(self, record: bytes, expected: tuple[int, ...], what: str,
             position: int | None = None) -> tuple[int, int, bytes]:
        """(type, flags, plaintext) of a record expected at the next position (or at
        `position`); UNAUTHENTICATED when it is of another type or does not open there."""
        if not record or record[0] != VERSION:
            check_version(record, what)
        if len(record) < 3 + TAG_BYTES:
            raise FastProxyError(Reason.UNAUTHENTICATED, f"{what} is cut short")
        record_type, flags = record[1], record[2]
        if record_type not in expected:
            wanted = " or ".join(_NAMES.get(t, str(t)) for t in expected)
            raise FastProxyError(Reason.UNAUTHENTICATED,
                                 f"{what} is a {_NAMES.get(record_type, record_type)} record "
                                 f"where {wanted} was due")
        at = self.position if position is None else position
        the_nonce = nonce(self.call_number, at)
        if record_type == DATA and flags & CLEAR:
            if not self.clear:
                raise FastProxyError(Reason.UNAUTHENTICATED,
                                     f"{what} is not encrypted but this service requires it")
            payload, tag = record[3:-TAG_BYTES], record[-TAG_BYTES:]
            self._aead.open(the_nonce, tag, record[:3] + payload, what)
            plaintext = payload
        else:
            plaintext = self._aead.open(the_nonce, record[3:], record[:3], what)
        if position is None:
            self.position += 1
        return record_type, flags, plaintext

    # --- messages ------------------------------------------------------------------------

    def seal_message(self, message: bytes, compressor: Compressor | None,
                     final: bool = False) -> bytes:
        if self.ended:
            raise FastProxyError(Reason.UNAUTHENTICATED, "a message after the end")
        codec = 0
        if compressor is not None:
            codec, message = compressor.compress(message)
        if final:
            self.ended = True
        return carry(self.seal(DATA, message, codec | (FINAL if final else 0)))

    def open_message(self, data: bytes, what: str) -> bytes | None:
        """The message a carrier holds; None for an END record (requests only)."""
        if self.ended:
            raise FastProxyError(Reason.UNAUTHENTICATED, f"{what} after the end of its stream")
        record = uncarry(data, self.max_bytes)
        record_type, flags, plaintext = self.open(record, (DATA, END), what)
        if record_type == END:
            if plaintext != (self.position - 2).to_bytes(4, "big"):
                raise FastProxyError(Reason.UNAUTHENTICATED, f"{what}: END counts other "
                                                             "messages than arrived")
            self.ended = True
            return None
        if flags & FINAL:
            self.ended = True
        message = decompress(flags & CODEC_MASK, plaintext, self.max_bytes)
        if len(message) > self.max_bytes:
            raise FastProxyError(Reason.MALFORMED,
                                 f"message exceeds the limit of {self.max_bytes} bytes")
        return message

    def seal_end(self) -> bytes | None:
        """The END record after the last message, unless one was flagged FINAL."""
        if self.ended:
            return None
        count = self.position - 1
        self.ended = True
        return carry(self.seal(END, count.to_bytes(4, "big")))
