from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KeyType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KEY_TYPE_UNSPECIFIED: _ClassVar[KeyType]
    KEY_TYPE_AES_256_GCM: _ClassVar[KeyType]
    KEY_TYPE_CHACHA20_POLY1305: _ClassVar[KeyType]
    KEY_TYPE_HMAC_SHA256: _ClassVar[KeyType]
    KEY_TYPE_ED25519: _ClassVar[KeyType]

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_IN: _ClassVar[Role]
    ROLE_OUT: _ClassVar[Role]
    ROLE_CLIENT: _ClassVar[Role]
    ROLE_APP: _ClassVar[Role]
KEY_TYPE_UNSPECIFIED: KeyType
KEY_TYPE_AES_256_GCM: KeyType
KEY_TYPE_CHACHA20_POLY1305: KeyType
KEY_TYPE_HMAC_SHA256: KeyType
KEY_TYPE_ED25519: KeyType
ROLE_UNSPECIFIED: Role
ROLE_IN: Role
ROLE_OUT: Role
ROLE_CLIENT: Role
ROLE_APP: Role

class Key(_message.Message):
    __slots__ = ("name", "type", "secret", "public_key", "pair_signer", "pair_peer")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    PAIR_SIGNER_FIELD_NUMBER: _ClassVar[int]
    PAIR_PEER_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: KeyType
    secret: bytes
    public_key: bytes
    pair_signer: str
    pair_peer: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[KeyType, str]] = ..., secret: _Optional[bytes] = ..., public_key: _Optional[bytes] = ..., pair_signer: _Optional[str] = ..., pair_peer: _Optional[str] = ...) -> None: ...

class RateLimit(_message.Message):
    __slots__ = ("rps", "burst")
    RPS_FIELD_NUMBER: _ClassVar[int]
    BURST_FIELD_NUMBER: _ClassVar[int]
    rps: float
    burst: int
    def __init__(self, rps: _Optional[float] = ..., burst: _Optional[int] = ...) -> None: ...

class AllowRule(_message.Message):
    __slots__ = ("caller", "methods", "rate_limit", "audit")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FIELD_NUMBER: _ClassVar[int]
    caller: str
    methods: _containers.RepeatedScalarFieldContainer[str]
    rate_limit: RateLimit
    audit: bool
    def __init__(self, caller: _Optional[str] = ..., methods: _Optional[_Iterable[str]] = ..., rate_limit: _Optional[_Union[RateLimit, _Mapping]] = ..., audit: bool = ...) -> None: ...

class Compression(_message.Message):
    __slots__ = ("algorithm", "min_bytes")
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    MIN_BYTES_FIELD_NUMBER: _ClassVar[int]
    algorithm: str
    min_bytes: int
    def __init__(self, algorithm: _Optional[str] = ..., min_bytes: _Optional[int] = ...) -> None: ...

class RetryPolicy(_message.Message):
    __slots__ = ("max_attempts", "initial_backoff_ms", "max_backoff_ms")
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    INITIAL_BACKOFF_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_BACKOFF_MS_FIELD_NUMBER: _ClassVar[int]
    max_attempts: int
    initial_backoff_ms: int
    max_backoff_ms: int
    def __init__(self, max_attempts: _Optional[int] = ..., initial_backoff_ms: _Optional[int] = ..., max_backoff_ms: _Optional[int] = ...) -> None: ...

class KeyRef(_message.Message):
    __slots__ = ("key", "accept")
    KEY_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_FIELD_NUMBER: _ClassVar[int]
    key: str
    accept: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key: _Optional[str] = ..., accept: _Optional[_Iterable[str]] = ...) -> None: ...

class Service(_message.Message):
    __slots__ = ("name", "grpc_services", "endpoints", "identity", "encrypt", "compress", "timeout_ms", "allow", "retry", "secret_metadata", "audit")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GRPC_SERVICES_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    ENCRYPT_FIELD_NUMBER: _ClassVar[int]
    COMPRESS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    SECRET_METADATA_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FIELD_NUMBER: _ClassVar[int]
    name: str
    grpc_services: _containers.RepeatedScalarFieldContainer[str]
    endpoints: _containers.RepeatedScalarFieldContainer[str]
    identity: KeyRef
    encrypt: KeyRef
    compress: Compression
    timeout_ms: int
    allow: _containers.RepeatedCompositeFieldContainer[AllowRule]
    retry: RetryPolicy
    secret_metadata: _containers.RepeatedScalarFieldContainer[str]
    audit: bool
    def __init__(self, name: _Optional[str] = ..., grpc_services: _Optional[_Iterable[str]] = ..., endpoints: _Optional[_Iterable[str]] = ..., identity: _Optional[_Union[KeyRef, _Mapping]] = ..., encrypt: _Optional[_Union[KeyRef, _Mapping]] = ..., compress: _Optional[_Union[Compression, _Mapping]] = ..., timeout_ms: _Optional[int] = ..., allow: _Optional[_Iterable[_Union[AllowRule, _Mapping]]] = ..., retry: _Optional[_Union[RetryPolicy, _Mapping]] = ..., secret_metadata: _Optional[_Iterable[str]] = ..., audit: bool = ...) -> None: ...

class OtherService(_message.Message):
    __slots__ = ("name", "grpc_services")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GRPC_SERVICES_FIELD_NUMBER: _ClassVar[int]
    name: str
    grpc_services: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., grpc_services: _Optional[_Iterable[str]] = ...) -> None: ...

class PolicySnapshot(_message.Message):
    __slots__ = ("revision", "node_service", "role", "keys", "services", "others")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    NODE_SERVICE_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    OTHERS_FIELD_NUMBER: _ClassVar[int]
    revision: int
    node_service: str
    role: Role
    keys: _containers.RepeatedCompositeFieldContainer[Key]
    services: _containers.RepeatedCompositeFieldContainer[Service]
    others: _containers.RepeatedCompositeFieldContainer[OtherService]
    def __init__(self, revision: _Optional[int] = ..., node_service: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., keys: _Optional[_Iterable[_Union[Key, _Mapping]]] = ..., services: _Optional[_Iterable[_Union[Service, _Mapping]]] = ..., others: _Optional[_Iterable[_Union[OtherService, _Mapping]]] = ...) -> None: ...

class SignedSnapshot(_message.Message):
    __slots__ = ("snapshot", "content_hash", "signature", "center_public_key")
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CENTER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    snapshot: bytes
    content_hash: str
    signature: bytes
    center_public_key: bytes
    def __init__(self, snapshot: _Optional[bytes] = ..., content_hash: _Optional[str] = ..., signature: _Optional[bytes] = ..., center_public_key: _Optional[bytes] = ...) -> None: ...
