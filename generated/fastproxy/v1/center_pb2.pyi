from fastproxy.v1 import policy_pb2 as _policy_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeHello(_message.Message):
    __slots__ = ("node_id", "role", "service", "known_revision", "known_hash")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    KNOWN_REVISION_FIELD_NUMBER: _ClassVar[int]
    KNOWN_HASH_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    role: _policy_pb2.Role
    service: str
    known_revision: int
    known_hash: str
    def __init__(self, node_id: _Optional[str] = ..., role: _Optional[_Union[_policy_pb2.Role, str]] = ..., service: _Optional[str] = ..., known_revision: _Optional[int] = ..., known_hash: _Optional[str] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("revision", "content_hash")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    revision: int
    content_hash: str
    def __init__(self, revision: _Optional[int] = ..., content_hash: _Optional[str] = ...) -> None: ...

class Nack(_message.Message):
    __slots__ = ("revision", "content_hash", "error")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    revision: int
    content_hash: str
    error: str
    def __init__(self, revision: _Optional[int] = ..., content_hash: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class Register(_message.Message):
    __slots__ = ("address", "lease_seconds")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    address: str
    lease_seconds: int
    def __init__(self, address: _Optional[str] = ..., lease_seconds: _Optional[int] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("hello", "ack", "nack", "register")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    NACK_FIELD_NUMBER: _ClassVar[int]
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    hello: NodeHello
    ack: Ack
    nack: Nack
    register: Register
    def __init__(self, hello: _Optional[_Union[NodeHello, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., nack: _Optional[_Union[Nack, _Mapping]] = ..., register: _Optional[_Union[Register, _Mapping]] = ...) -> None: ...

class WatchResponse(_message.Message):
    __slots__ = ("snapshot",)
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    snapshot: _policy_pb2.SignedSnapshot
    def __init__(self, snapshot: _Optional[_Union[_policy_pb2.SignedSnapshot, _Mapping]] = ...) -> None: ...

class ApplyPolicyRequest(_message.Message):
    __slots__ = ("yaml", "comment", "refuse_removals")
    YAML_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    REFUSE_REMOVALS_FIELD_NUMBER: _ClassVar[int]
    yaml: str
    comment: str
    refuse_removals: bool
    def __init__(self, yaml: _Optional[str] = ..., comment: _Optional[str] = ..., refuse_removals: bool = ...) -> None: ...

class RevisionInfo(_message.Message):
    __slots__ = ("revision", "created_unix", "author", "comment", "content_hash", "rolled_back_from")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    ROLLED_BACK_FROM_FIELD_NUMBER: _ClassVar[int]
    revision: int
    created_unix: float
    author: str
    comment: str
    content_hash: str
    rolled_back_from: int
    def __init__(self, revision: _Optional[int] = ..., created_unix: _Optional[float] = ..., author: _Optional[str] = ..., comment: _Optional[str] = ..., content_hash: _Optional[str] = ..., rolled_back_from: _Optional[int] = ...) -> None: ...

class ApplyPolicyResponse(_message.Message):
    __slots__ = ("applied", "revision", "errors", "message", "removed_services_with_nodes")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REMOVED_SERVICES_WITH_NODES_FIELD_NUMBER: _ClassVar[int]
    applied: bool
    revision: RevisionInfo
    errors: _containers.RepeatedScalarFieldContainer[str]
    message: str
    removed_services_with_nodes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, applied: bool = ..., revision: _Optional[_Union[RevisionInfo, _Mapping]] = ..., errors: _Optional[_Iterable[str]] = ..., message: _Optional[str] = ..., removed_services_with_nodes: _Optional[_Iterable[str]] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ("revision", "show_secrets")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SHOW_SECRETS_FIELD_NUMBER: _ClassVar[int]
    revision: int
    show_secrets: bool
    def __init__(self, revision: _Optional[int] = ..., show_secrets: bool = ...) -> None: ...

class GetPolicyResponse(_message.Message):
    __slots__ = ("revision", "yaml")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    YAML_FIELD_NUMBER: _ClassVar[int]
    revision: RevisionInfo
    yaml: str
    def __init__(self, revision: _Optional[_Union[RevisionInfo, _Mapping]] = ..., yaml: _Optional[str] = ...) -> None: ...

class ListRevisionsRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class ListRevisionsResponse(_message.Message):
    __slots__ = ("revisions",)
    REVISIONS_FIELD_NUMBER: _ClassVar[int]
    revisions: _containers.RepeatedCompositeFieldContainer[RevisionInfo]
    def __init__(self, revisions: _Optional[_Iterable[_Union[RevisionInfo, _Mapping]]] = ...) -> None: ...

class RollbackPolicyRequest(_message.Message):
    __slots__ = ("revision", "comment")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    revision: int
    comment: str
    def __init__(self, revision: _Optional[int] = ..., comment: _Optional[str] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("node_id", "role", "service", "peer", "connected_since_unix", "sent_revision", "acked_revision", "acked_hash", "nacked_revision", "nack_error", "registered_addresses", "current")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_SINCE_UNIX_FIELD_NUMBER: _ClassVar[int]
    SENT_REVISION_FIELD_NUMBER: _ClassVar[int]
    ACKED_REVISION_FIELD_NUMBER: _ClassVar[int]
    ACKED_HASH_FIELD_NUMBER: _ClassVar[int]
    NACKED_REVISION_FIELD_NUMBER: _ClassVar[int]
    NACK_ERROR_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    role: _policy_pb2.Role
    service: str
    peer: str
    connected_since_unix: float
    sent_revision: int
    acked_revision: int
    acked_hash: str
    nacked_revision: int
    nack_error: str
    registered_addresses: _containers.RepeatedScalarFieldContainer[str]
    current: bool
    def __init__(self, node_id: _Optional[str] = ..., role: _Optional[_Union[_policy_pb2.Role, str]] = ..., service: _Optional[str] = ..., peer: _Optional[str] = ..., connected_since_unix: _Optional[float] = ..., sent_revision: _Optional[int] = ..., acked_revision: _Optional[int] = ..., acked_hash: _Optional[str] = ..., nacked_revision: _Optional[int] = ..., nack_error: _Optional[str] = ..., registered_addresses: _Optional[_Iterable[str]] = ..., current: bool = ...) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes", "latest_revision")
    NODES_FIELD_NUMBER: _ClassVar[int]
    LATEST_REVISION_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    latest_revision: int
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ..., latest_revision: _Optional[int] = ...) -> None: ...

class GetCenterInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCenterInfoResponse(_message.Message):
    __slots__ = ("public_key", "latest_revision", "development_mode")
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    LATEST_REVISION_FIELD_NUMBER: _ClassVar[int]
    DEVELOPMENT_MODE_FIELD_NUMBER: _ClassVar[int]
    public_key: bytes
    latest_revision: int
    development_mode: bool
    def __init__(self, public_key: _Optional[bytes] = ..., latest_revision: _Optional[int] = ..., development_mode: bool = ...) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("id", "time_unix", "actor", "peer", "action", "revision", "detail")
    ID_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    id: int
    time_unix: float
    actor: str
    peer: str
    action: str
    revision: int
    detail: str
    def __init__(self, id: _Optional[int] = ..., time_unix: _Optional[float] = ..., actor: _Optional[str] = ..., peer: _Optional[str] = ..., action: _Optional[str] = ..., revision: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...

class ListAuditEventsRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class ListAuditEventsResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("caller", "method", "revision")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    caller: str
    method: str
    revision: int
    def __init__(self, caller: _Optional[str] = ..., method: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class ExplainEndpoint(_message.Message):
    __slots__ = ("address", "registered")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    address: str
    registered: bool
    def __init__(self, address: _Optional[str] = ..., registered: bool = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("revision", "caller", "method", "callee", "verdict", "rule", "audit", "detail", "rate_limited", "rate_limit_rps", "rate_limit_burst", "timeout_ms", "encryption", "compression", "endpoints")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CALLEE_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMITED_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_RPS_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_BURST_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    revision: int
    caller: str
    method: str
    callee: str
    verdict: str
    rule: str
    audit: str
    detail: str
    rate_limited: bool
    rate_limit_rps: float
    rate_limit_burst: int
    timeout_ms: int
    encryption: str
    compression: str
    endpoints: _containers.RepeatedCompositeFieldContainer[ExplainEndpoint]
    def __init__(self, revision: _Optional[int] = ..., caller: _Optional[str] = ..., method: _Optional[str] = ..., callee: _Optional[str] = ..., verdict: _Optional[str] = ..., rule: _Optional[str] = ..., audit: _Optional[str] = ..., detail: _Optional[str] = ..., rate_limited: bool = ..., rate_limit_rps: _Optional[float] = ..., rate_limit_burst: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., encryption: _Optional[str] = ..., compression: _Optional[str] = ..., endpoints: _Optional[_Iterable[_Union[ExplainEndpoint, _Mapping]]] = ...) -> None: ...

class PreviewPolicyRequest(_message.Message):
    __slots__ = ("yaml", "revision")
    YAML_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    yaml: str
    revision: int
    def __init__(self, yaml: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class PreviewNode(_message.Message):
    __slots__ = ("node_id", "role", "service")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    role: _policy_pb2.Role
    service: str
    def __init__(self, node_id: _Optional[str] = ..., role: _Optional[_Union[_policy_pb2.Role, str]] = ..., service: _Optional[str] = ...) -> None: ...

class PreviewPolicyResponse(_message.Message):
    __slots__ = ("errors", "latest_revision", "changed", "diff", "nodes_to_update", "nodes_unchanged", "removed_services", "removed_services_with_nodes")
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    LATEST_REVISION_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    DIFF_FIELD_NUMBER: _ClassVar[int]
    NODES_TO_UPDATE_FIELD_NUMBER: _ClassVar[int]
    NODES_UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_SERVICES_FIELD_NUMBER: _ClassVar[int]
    REMOVED_SERVICES_WITH_NODES_FIELD_NUMBER: _ClassVar[int]
    errors: _containers.RepeatedScalarFieldContainer[str]
    latest_revision: int
    changed: bool
    diff: str
    nodes_to_update: _containers.RepeatedCompositeFieldContainer[PreviewNode]
    nodes_unchanged: int
    removed_services: _containers.RepeatedScalarFieldContainer[str]
    removed_services_with_nodes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, errors: _Optional[_Iterable[str]] = ..., latest_revision: _Optional[int] = ..., changed: bool = ..., diff: _Optional[str] = ..., nodes_to_update: _Optional[_Iterable[_Union[PreviewNode, _Mapping]]] = ..., nodes_unchanged: _Optional[int] = ..., removed_services: _Optional[_Iterable[str]] = ..., removed_services_with_nodes: _Optional[_Iterable[str]] = ...) -> None: ...

class RotateKeyRequest(_message.Message):
    __slots__ = ("key", "new_type", "advance")
    KEY_FIELD_NUMBER: _ClassVar[int]
    NEW_TYPE_FIELD_NUMBER: _ClassVar[int]
    ADVANCE_FIELD_NUMBER: _ClassVar[int]
    key: str
    new_type: str
    advance: bool
    def __init__(self, key: _Optional[str] = ..., new_type: _Optional[str] = ..., advance: bool = ...) -> None: ...

class RotateKeyResponse(_message.Message):
    __slots__ = ("key", "successor", "phase", "applied")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SUCCESSOR_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    key: str
    successor: str
    phase: str
    applied: ApplyPolicyResponse
    def __init__(self, key: _Optional[str] = ..., successor: _Optional[str] = ..., phase: _Optional[str] = ..., applied: _Optional[_Union[ApplyPolicyResponse, _Mapping]] = ...) -> None: ...
