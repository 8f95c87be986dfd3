from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AeadSuite(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AEAD_SUITE_UNSPECIFIED: _ClassVar[AeadSuite]
    AEAD_SUITE_AES_256_GCM: _ClassVar[AeadSuite]
    AEAD_SUITE_CHACHA20_POLY1305: _ClassVar[AeadSuite]

class Codec(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CODEC_NONE: _ClassVar[Codec]
    CODEC_GZIP: _ClassVar[Codec]
    CODEC_ZSTD: _ClassVar[Codec]
AEAD_SUITE_UNSPECIFIED: AeadSuite
AEAD_SUITE_AES_256_GCM: AeadSuite
AEAD_SUITE_CHACHA20_POLY1305: AeadSuite
CODEC_NONE: Codec
CODEC_GZIP: Codec
CODEC_ZSTD: Codec

class ClientHello(_message.Message):
    __slots__ = ("version", "caller", "callee", "identity_key", "ephemeral", "random", "timestamp_ms", "suite", "psk", "lost_session")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    CALLEE_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_KEY_FIELD_NUMBER: _ClassVar[int]
    EPHEMERAL_FIELD_NUMBER: _ClassVar[int]
    RANDOM_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    SUITE_FIELD_NUMBER: _ClassVar[int]
    PSK_FIELD_NUMBER: _ClassVar[int]
    LOST_SESSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    caller: str
    callee: str
    identity_key: str
    ephemeral: bytes
    random: bytes
    timestamp_ms: int
    suite: AeadSuite
    psk: str
    lost_session: bytes
    def __init__(self, version: _Optional[int] = ..., caller: _Optional[str] = ..., callee: _Optional[str] = ..., identity_key: _Optional[str] = ..., ephemeral: _Optional[bytes] = ..., random: _Optional[bytes] = ..., timestamp_ms: _Optional[int] = ..., suite: _Optional[_Union[AeadSuite, str]] = ..., psk: _Optional[str] = ..., lost_session: _Optional[bytes] = ...) -> None: ...

class ServerHello(_message.Message):
    __slots__ = ("version", "session_id", "ephemeral", "identity_key", "lifetime_s", "max_calls", "client_hello_digest", "lost_session_refused")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    EPHEMERAL_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_KEY_FIELD_NUMBER: _ClassVar[int]
    LIFETIME_S_FIELD_NUMBER: _ClassVar[int]
    MAX_CALLS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_HELLO_DIGEST_FIELD_NUMBER: _ClassVar[int]
    LOST_SESSION_REFUSED_FIELD_NUMBER: _ClassVar[int]
    version: int
    session_id: bytes
    ephemeral: bytes
    identity_key: str
    lifetime_s: int
    max_calls: int
    client_hello_digest: bytes
    lost_session_refused: bool
    def __init__(self, version: _Optional[int] = ..., session_id: _Optional[bytes] = ..., ephemeral: _Optional[bytes] = ..., identity_key: _Optional[str] = ..., lifetime_s: _Optional[int] = ..., max_calls: _Optional[int] = ..., client_hello_digest: _Optional[bytes] = ..., lost_session_refused: bool = ...) -> None: ...

class SignedHello(_message.Message):
    __slots__ = ("hello", "signature")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    hello: bytes
    signature: bytes
    def __init__(self, hello: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class MetadataPair(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: bytes
    def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...

class CallHead(_message.Message):
    __slots__ = ("method", "timestamp_ms", "metadata_digest", "secret")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    METADATA_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    method: str
    timestamp_ms: int
    metadata_digest: bytes
    secret: _containers.RepeatedCompositeFieldContainer[MetadataPair]
    def __init__(self, method: _Optional[str] = ..., timestamp_ms: _Optional[int] = ..., metadata_digest: _Optional[bytes] = ..., secret: _Optional[_Iterable[_Union[MetadataPair, _Mapping]]] = ...) -> None: ...

class ResponseHead(_message.Message):
    __slots__ = ("metadata_digest", "secret")
    METADATA_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    metadata_digest: bytes
    secret: _containers.RepeatedCompositeFieldContainer[MetadataPair]
    def __init__(self, metadata_digest: _Optional[bytes] = ..., secret: _Optional[_Iterable[_Union[MetadataPair, _Mapping]]] = ...) -> None: ...

class ResponseEnd(_message.Message):
    __slots__ = ("code", "details_digest", "trailers_digest", "secret", "messages", "head", "unary")
    CODE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    TRAILERS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    UNARY_FIELD_NUMBER: _ClassVar[int]
    code: int
    details_digest: bytes
    trailers_digest: bytes
    secret: _containers.RepeatedCompositeFieldContainer[MetadataPair]
    messages: int
    head: bool
    unary: bool
    def __init__(self, code: _Optional[int] = ..., details_digest: _Optional[bytes] = ..., trailers_digest: _Optional[bytes] = ..., secret: _Optional[_Iterable[_Union[MetadataPair, _Mapping]]] = ..., messages: _Optional[int] = ..., head: bool = ..., unary: bool = ...) -> None: ...
