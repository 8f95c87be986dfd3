"""The policy of one embedded server, and what it decides per call (no gRPC here beyond
the types of what it hands back)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence

from fastproxy.hosting.refusal import HostRole, Refusal, refuse
from fastproxy.node.credentials import CenterCredentials
from fastproxy.node.holder import PolicyHolder
from fastproxy.node.source import PolicyThread, open_policy_source
from fastproxy.node.watch import NodeIdentity
from fastproxy.pipeline.handshake import CLOCK_AHEAD_S, MAX_SESSIONS, Defer
from fastproxy.pipeline.metadata import HELLO_KEY, Metadata, hello_of
from fastproxy.pipeline.node_policy import NodePolicy, NodeState
from fastproxy.pipeline.reasons import FastProxyError
from fastproxy.pipeline.stages import DEFAULT_MAX_MESSAGE_BYTES, InboundCall
from fastproxy.telemetry.logs import audit_would_deny
from fastproxy.v1 import policy_pb2 as pb

# Reachable without a sealed call: orchestrators' health checks speak plain grpc.health.v1.
DEFAULT_OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)


class EmbeddedPolicy:
    """The policy of one embedded server (an in-node of `service`), kept current by a watcher
    on its own thread, plus the state (sessions, rate limits) that outlives policy swaps.

    With `center`, the node watches the Center and, if `advertise` is set, registers that
    address as an endpoint of `service`; with `policy_file` it runs from the YAML file (a bad
    file raises `fastproxy.node.source.PolicySourceError` here). `clock_skew_s` and
    `max_sessions` are the in-proxy's `--clock-skew` and `--max-sessions`.
    """

    def __init__(self, *, service: str, center: str | None = None,
                 policy_file: str | None = None, node_id: str | None = None,
                 token: str | None = None, credentials: CenterCredentials | None = None,
                 advertise: str = "", pinned_key: bytes | None = None,
                 cache_dir: str | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 open_method_prefixes: Sequence[str] = DEFAULT_OPEN_METHOD_PREFIXES,
                 clock: Callable[[], float] = time.time,
                 clock_skew_s: float = CLOCK_AHEAD_S,
                 max_sessions: int = MAX_SESSIONS) -> None:
        if credentials is None:
            credentials = CenterCredentials(token=token or "")
        elif token:
            raise ValueError("give either token or credentials, not both")
        self.service = service
        self.node = NodeIdentity(
            node_id or f"{service}-server-{socket.gethostname()}-{os.getpid()}",
            pb.ROLE_IN, service, advertise=advertise)
        self.holder: PolicyHolder[NodePolicy] = PolicyHolder()
        self.state = NodeState(max_sessions=max_sessions)
        self._clock = clock
        self._open_prefixes = tuple(open_method_prefixes)

        def compile_snapshot(snapshot: pb.PolicySnapshot) -> NodePolicy:
            return NodePolicy.from_snapshot(snapshot, max_message_bytes=max_message_bytes,
                                            clock_ahead_s=clock_skew_s)

        source = open_policy_source(self.node, compile_snapshot, self.holder, center=center,
                                    policy_file=policy_file, credentials=credentials,
                                    pinned_key=pinned_key, cache_dir=cache_dir,
                                    threaded=True)
        self._thread = PolicyThread(source, name=f"fastproxy-policy-{service}")
        self._started = False

    def start(self) -> EmbeddedPolicy:
        """Starts watching (and registering); idempotent."""
        if not self._started:
            self._started = True
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stops watching; the Center drops the registration with the stream."""
        self._thread.stop(timeout)

    def wait_loaded(self, timeout: float | None = None) -> bool:
        """True once a policy is in force (False after `timeout` seconds without one, or at
        once while the Center refuses this node's credential)."""
        return self._thread.wait_loaded(timeout)

    @property
    def revision(self) -> int:
        return self.holder.revision

    def is_open(self, method: str) -> bool:
        """A method served to plain calls (health checks), without the protocol."""
        return method.startswith(self._open_prefixes)

    def admit(self, method: str, metadata: Metadata) -> InboundCall:
        """The opened, admitted call; raises `FastProxyError` when it is refused. A call let
        through by audit mode gets its audit line here (as at the in-proxy)."""
        call = self.holder.require().inbound(method, metadata, self._clock(), self.state)
        if call.would_deny:
            audit_would_deny(proxy=HostRole.IN.value, caller=call.caller, callee=self.service,
                             method=method, revision=self.revision, audit=call.would_deny,
                             peer="")
        return call

    def answer_hello(self, metadata: Metadata, defer: Defer | None = None) -> Metadata:
        """The trailers answering a caller's handshake (its hello is in `metadata`); raises
        `FastProxyError`. `defer`: see `CalleeSide.accept`."""
        answer = self.holder.require().accept(hello_of(metadata), self._clock(), self.state,
                                              defer)
        return ((HELLO_KEY, answer),)

    def refused(self, error: FastProxyError, method: str, peer: str | None,
                seal: Callable[[int, str, Metadata], Metadata] | None = None) -> Refusal:
        """The answer to a refused call, after its audit line (as the in-proxy's), sealed
        when the call was opened."""
        answer = refuse(error, HostRole.IN, service=self.service, other="", method=method,
                        revision=self.revision, peer=peer or "")
        seal = error.seal_end or seal
        if seal is None:
            return answer
        return Refusal(answer.code, answer.details,
                       seal(answer.code.value[0], answer.details, answer.trailers))
