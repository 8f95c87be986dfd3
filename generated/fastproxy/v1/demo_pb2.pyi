from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EchoRequest(_message.Message):
    __slots__ = ("text", "payload", "repeat")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    REPEAT_FIELD_NUMBER: _ClassVar[int]
    text: str
    payload: bytes
    repeat: int
    def __init__(self, text: _Optional[str] = ..., payload: _Optional[bytes] = ..., repeat: _Optional[int] = ...) -> None: ...

class EchoResponse(_message.Message):
    __slots__ = ("text", "payload", "index")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    text: str
    payload: bytes
    index: int
    def __init__(self, text: _Optional[str] = ..., payload: _Optional[bytes] = ..., index: _Optional[int] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("id", "name", "category", "price_cents", "tags")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    PRICE_CENTS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    category: str
    price_cents: int
    tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., category: _Optional[str] = ..., price_cents: _Optional[int] = ..., tags: _Optional[_Iterable[str]] = ...) -> None: ...

class GetItemRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListItemsRequest(_message.Message):
    __slots__ = ("category", "name_contains", "page_size", "after_id")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    NAME_CONTAINS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    category: str
    name_contains: str
    page_size: int
    after_id: str
    def __init__(self, category: _Optional[str] = ..., name_contains: _Optional[str] = ..., page_size: _Optional[int] = ..., after_id: _Optional[str] = ...) -> None: ...

class PutItemRequest(_message.Message):
    __slots__ = ("item",)
    ITEM_FIELD_NUMBER: _ClassVar[int]
    item: Item
    def __init__(self, item: _Optional[_Union[Item, _Mapping]] = ...) -> None: ...

class PutItemResponse(_message.Message):
    __slots__ = ("item", "created", "revision")
    ITEM_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    item: Item
    created: bool
    revision: int
    def __init__(self, item: _Optional[_Union[Item, _Mapping]] = ..., created: bool = ..., revision: _Optional[int] = ...) -> None: ...

class CountRequest(_message.Message):
    __slots__ = ("category",)
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    category: str
    def __init__(self, category: _Optional[str] = ...) -> None: ...

class CountResponse(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...
