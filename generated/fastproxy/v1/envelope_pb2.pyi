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

class CallHeader(_message.Message):
    __slots__ = ("caller", "callee", "method", "call_id", "timestamp_ms", "nonce", "signature_type")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    CALLEE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_TYPE_FIELD_NUMBER: _ClassVar[int]
    caller: str
    callee: str
    method: str
    call_id: bytes
    timestamp_ms: int
    nonce: bytes
    signature_type: SignatureType
    def __init__(self, caller: _Optional[str] = ..., callee: _Optional[str] = ..., method: _Optional[str] = ..., call_id: _Optional[bytes] = ..., timestamp_ms: _Optional[int] = ..., nonce: _Optional[bytes] = ..., signature_type: _Optional[_Union[SignatureType, str]] = ...) -> None: ...

class SignedCallHeader(_message.Message):
    __slots__ = ("version", "sig_key_id", "header", "signature")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SIG_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    version: int
    sig_key_id: bytes
    header: bytes
    signature: bytes
    def __init__(self, version: _Optional[int] = ..., sig_key_id: _Optional[bytes] = ..., header: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class MessageHeader(_message.Message):
    __slots__ = ("caller", "callee", "call_id", "direction", "sequence", "timestamp_ms", "algorithm", "enc_key_id", "nonce", "codec", "flags", "signature_type")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    CALLEE_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    ENC_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_TYPE_FIELD_NUMBER: _ClassVar[int]
    caller: str
    callee: str
    call_id: bytes
    direction: Direction
    sequence: int
    timestamp_ms: int
    algorithm: Algorithm
    enc_key_id: str
    nonce: bytes
    codec: Codec
    flags: int
    signature_type: SignatureType
    def __init__(self, caller: _Optional[str] = ..., callee: _Optional[str] = ..., call_id: _Optional[bytes] = ..., direction: _Optional[_Union[Direction, str]] = ..., sequence: _Optional[int] = ..., timestamp_ms: _Optional[int] = ..., algorithm: _Optional[_Union[Algorithm, str]] = ..., enc_key_id: _Optional[str] = ..., nonce: _Optional[bytes] = ..., codec: _Optional[_Union[Codec, str]] = ..., flags: _Optional[int] = ..., signature_type: _Optional[_Union[SignatureType, str]] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("version", "sig_key_id", "header", "payload", "signature")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SIG_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    version: int
    sig_key_id: bytes
    header: bytes
    payload: bytes
    signature: bytes
    def __init__(self, version: _Optional[int] = ..., sig_key_id: _Optional[bytes] = ..., header: _Optional[bytes] = ..., payload: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class Sealed(_message.Message):
    __slots__ = ("envelope",)
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    envelope: Envelope
    def __init__(self, envelope: _Optional[_Union[Envelope, _Mapping]] = ...) -> None: ...
