from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MetadataEntry(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: bytes
    def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...

class TunnelCall(_message.Message):
    __slots__ = ("method", "metadata", "timeout_us", "message", "any_kind")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_US_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ANY_KIND_FIELD_NUMBER: _ClassVar[int]
    method: str
    metadata: _containers.RepeatedCompositeFieldContainer[MetadataEntry]
    timeout_us: int
    message: bytes
    any_kind: bool
    def __init__(self, method: _Optional[str] = ..., metadata: _Optional[_Iterable[_Union[MetadataEntry, _Mapping]]] = ..., timeout_us: _Optional[int] = ..., message: _Optional[bytes] = ..., any_kind: bool = ...) -> None: ...

class TunnelResponse(_message.Message):
    __slots__ = ("message", "initial_metadata")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    INITIAL_METADATA_FIELD_NUMBER: _ClassVar[int]
    message: bytes
    initial_metadata: _containers.RepeatedCompositeFieldContainer[MetadataEntry]
    def __init__(self, message: _Optional[bytes] = ..., initial_metadata: _Optional[_Iterable[_Union[MetadataEntry, _Mapping]]] = ...) -> None: ...

class TunnelReply(_message.Message):
    __slots__ = ("code", "details", "initial_metadata", "trailing_metadata", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    INITIAL_METADATA_FIELD_NUMBER: _ClassVar[int]
    TRAILING_METADATA_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    details: str
    initial_metadata: _containers.RepeatedCompositeFieldContainer[MetadataEntry]
    trailing_metadata: _containers.RepeatedCompositeFieldContainer[MetadataEntry]
    message: bytes
    def __init__(self, code: _Optional[int] = ..., details: _Optional[str] = ..., initial_metadata: _Optional[_Iterable[_Union[MetadataEntry, _Mapping]]] = ..., trailing_metadata: _Optional[_Iterable[_Union[MetadataEntry, _Mapping]]] = ..., message: _Optional[bytes] = ...) -> None: ...

class TunnelFrame(_message.Message):
    __slots__ = ("id", "call", "reply", "cancel", "goaway", "response", "ack")
    ID_FIELD_NUMBER: _ClassVar[int]
    CALL_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    GOAWAY_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    id: int
    call: TunnelCall
    reply: TunnelReply
    cancel: bool
    goaway: bool
    response: TunnelResponse
    ack: bool
    def __init__(self, id: _Optional[int] = ..., call: _Optional[_Union[TunnelCall, _Mapping]] = ..., reply: _Optional[_Union[TunnelReply, _Mapping]] = ..., cancel: bool = ..., goaway: bool = ..., response: _Optional[_Union[TunnelResponse, _Mapping]] = ..., ack: bool = ...) -> None: ...

class TunnelFrames(_message.Message):
    __slots__ = ("frames",)
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    frames: _containers.RepeatedCompositeFieldContainer[TunnelFrame]
    def __init__(self, frames: _Optional[_Iterable[_Union[TunnelFrame, _Mapping]]] = ...) -> None: ...
