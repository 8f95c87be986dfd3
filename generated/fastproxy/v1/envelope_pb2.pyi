from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Direction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIRECTION_UNSPECIFIED: _ClassVar[Direction]
    DIRECTION_REQUEST: _ClassVar[Direction]
    DIRECTION_RESPONSE: _ClassVar[Direction]

class Algorithm(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALGORITHM_NONE: _ClassVar[Algorithm]
    ALGORITHM_AES_256_GCM: _ClassVar[Algorithm]
    ALGORITHM_CHACHA20_POLY1305: _ClassVar[Algorithm]

class Codec(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CODEC_NONE: _ClassVar[Codec]
    CODEC_GZIP: _ClassVar[Codec]
    CODEC_ZSTD: _ClassVar[Codec]

class SignatureType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIGNATURE_NONE: _ClassVar[SignatureType]
    SIGNATURE_HMAC_SHA256: _ClassVar[SignatureType]
    SIGNATURE_ED25519: _ClassVar[SignatureType]
DIRECTION_UNSPECIFIED: Direction
DIRECTION_REQUEST: Direction
DIRECTION_RESPONSE: Direction
ALGORITHM_NONE: Algorithm
ALGORITHM_AES_256_GCM: Algorithm
ALGORITHM_CHACHA20_POLY1305: Algorithm
CODEC_NONE: Codec
CODEC_GZIP: Codec
CODEC_ZSTD: Codec
SIGNATURE_NONE: SignatureType
SIGNATURE_HMAC_SHA256: SignatureType
SIGNATURE_ED25519: SignatureType

class Envelope(_message.Message):
    __slots__ = ("version", "enc_key_id", "algorithm", "nonce", "timestamp_ms", "caller", "callee", "call_id", "sequence", "direction", "codec", "flags", "payload", "sig_key_id", "signature_type", "signature")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ENC_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    CALLEE_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SIG_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    version: int
    enc_key_id: str
    algorithm: Algorithm
    nonce: bytes
    timestamp_ms: int
    caller: str
    callee: str
    call_id: bytes
    sequence: int
    direction: Direction
    codec: Codec
    flags: int
    payload: bytes
    sig_key_id: str
    signature_type: SignatureType
    signature: bytes
    def __init__(self, version: _Optional[int] = ..., enc_key_id: _Optional[str] = ..., algorithm: _Optional[_Union[Algorithm, str]] = ..., nonce: _Optional[bytes] = ..., timestamp_ms: _Optional[int] = ..., caller: _Optional[str] = ..., callee: _Optional[str] = ..., call_id: _Optional[bytes] = ..., sequence: _Optional[int] = ..., direction: _Optional[_Union[Direction, str]] = ..., codec: _Optional[_Union[Codec, str]] = ..., flags: _Optional[int] = ..., payload: _Optional[bytes] = ..., sig_key_id: _Optional[str] = ..., signature_type: _Optional[_Union[SignatureType, str]] = ..., signature: _Optional[bytes] = ...) -> None: ...

class Sealed(_message.Message):
    __slots__ = ("envelope",)
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    envelope: Envelope
    def __init__(self, envelope: _Optional[_Union[Envelope, _Mapping]] = ...) -> None: ...
