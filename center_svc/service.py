"""gRPC glue of `fastproxy.v1.Center`: authentication, admin RPCs and the WatchPolicy stream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import grpc

from center_svc.auth import Authenticator, Principal, Refused
from center_svc.control import ApplyOutcome, PolicyControl
from center_svc.nodes import NodeSession
from center_svc.rotation import RotationError
from center_svc.sealed_policy import SealedSecretError
from center_svc.store import AuditAction, AuditEvent, Revision, StoreUnavailableError
from fastproxy.policy import PolicyError
from fastproxy.policy.explain import Explanation
from fastproxy.policy.model import KeyType
from fastproxy.policy.redaction import redact_policy
from fastproxy.v1 import center_pb2, center_pb2_grpc, policy_pb2

log = logging.getLogger("center_svc.watch")
T = TypeVar("T")

ROLES = (policy_pb2.ROLE_IN, policy_pb2.ROLE_OUT, policy_pb2.ROLE_CLIENT, policy_pb2.ROLE_APP)
HELLO_TIMEOUT_S = 10.0
REFUSED_HELLO_WAIT_S = 0.5  # how long a caller refused its credential may take to say hello


def revision_info(revision: Revision) -> center_pb2.RevisionInfo:
    return center_pb2.RevisionInfo(
        revision=revision.revision,
        created_unix=revision.created_unix,
        author=revision.author,
        comment=revision.comment,
        content_hash=revision.content_hash,
        rolled_back_from=revision.rolled_back_from,
    )


def audit_event_message(event: AuditEvent) -> center_pb2.AuditEvent:
    return center_pb2.AuditEvent(
        id=event.id,
        time_unix=event.time_unix,
        actor=event.actor,
        peer=event.peer,
        action=event.action.value,
        revision=event.revision,
        detail=event.detail,
    )


def explain_response(found: Explanation) -> center_pb2.ExplainResponse:
    facts = found.facts
    response = center_pb2.ExplainResponse(
        revision=found.revision, caller=found.caller, method=found.method,
        callee=found.callee, verdict=found.verdict.value, rule=found.rule, audit=found.audit,
        detail=found.detail, timeout_ms=facts.timeout_ms, encryption=facts.encryption,
        compression=facts.compression,
        endpoints=[center_pb2.ExplainEndpoint(address=e.address, registered=e.registered)
                   for e in facts.endpoints])
    if found.rate_limit is not None:
        response.rate_limited = True
        response.rate_limit_rps, response.rate_limit_burst = found.rate_limit
    return response


def _apply_response(outcome: ApplyOutcome) -> center_pb2.ApplyPolicyResponse:
    response = center_pb2.ApplyPolicyResponse(
        applied=outcome.applied, errors=outcome.errors, message=outcome.message,
        removed_services_with_nodes=outcome.removed_services_with_nodes,
    )
    if outcome.revision is not None:
        response.revision.CopyFrom(revision_info(outcome.revision))
    return response


async def _or_unavailable(context: grpc.aio.ServicerContext, work: Awaitable[T]) -> T:
    """The result of `work`; UNAVAILABLE with the store's message while it is unreachable
    (a replica cut off from etcd)."""
    try:
        return await work
    except StoreUnavailableError as exc:
        await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        raise  # not reached: abort raises
    except SealedSecretError as exc:  # a revision sealed with a KEK this Center was not given
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        raise


class CenterServicer(center_pb2_grpc.CenterServicer):
    def __init__(self, control: PolicyControl, auth: Authenticator,
                 max_stream_age_s: float | None = None) -> None:
        self.control = control
        self.auth = auth
        self.stopping = False
        # Watch streams end after about this long (jittered) so that nodes spread again
        # over the replicas, e.g. after one came back; None: never
        self.max_stream_age_s = max_stream_age_s
        self._tokens: dict[NodeSession, bytes] = {}  # the token each stream was opened with

    # -- admin -------------------------------------------------------------------------------

    async def _admin(self, context: grpc.aio.ServicerContext, method: str) -> Principal:
        """The caller's principal if it is an administrator; otherwise the call is aborted
        and the refusal is an audit event (`denied`, actor `anonymous` without a valid
        credential)."""
        principal = self.auth.identify(context)
        peer = self.auth.peer(context)
        if isinstance(principal, Refused):
            log.warning("admin call %s refused from %s: %s", method, peer, principal.reason)
            await self.control.record(AuditAction.DENIED, "anonymous",
                                      f"UNAUTHENTICATED on {method}: no valid credential "
                                      f"({principal.reason})", peer=peer)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                f"no valid credential: {principal.reason}")
        assert isinstance(principal, Principal)
        if not principal.is_admin:
            log.warning("admin call %s refused for %s from %s", method, principal.label, peer)
            await self.control.record(AuditAction.DENIED, principal.label,
                                      f"PERMISSION_DENIED on {method}: not an administrator",
                                      peer=peer)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"{principal.label} is not an administrator")
        return principal

    async def ApplyPolicy(self, request: center_pb2.ApplyPolicyRequest,
                          context: grpc.aio.ServicerContext
                          ) -> center_pb2.ApplyPolicyResponse:
        principal = await self._admin(context, "ApplyPolicy")
        outcome = await _or_unavailable(context, self.control.apply(
            request.yaml, principal.label, request.comment, peer=self.auth.peer(context),
            refuse_removals=request.refuse_removals))
        return _apply_response(outcome)

    async def RollbackPolicy(self, request: center_pb2.RollbackPolicyRequest,
                             context: grpc.aio.ServicerContext
                             ) -> center_pb2.ApplyPolicyResponse:
        principal = await self._admin(context, "RollbackPolicy")
        outcome = await _or_unavailable(context, self.control.rollback(
            request.revision, principal.label, request.comment, peer=self.auth.peer(context)))
        if outcome.revision is None and outcome.errors:
            await context.abort(grpc.StatusCode.NOT_FOUND, outcome.errors[0])
        return _apply_response(outcome)

    async def GetPolicy(self, request: center_pb2.GetPolicyRequest,
                        context: grpc.aio.ServicerContext
                        ) -> center_pb2.GetPolicyResponse:
        principal = await self._admin(context, "GetPolicy")
        if request.show_secrets and not principal.may_read_secrets:
            peer = self.auth.peer(context)
            log.warning("GetPolicy with secrets refused for %s from %s", principal.label, peer)
            await self.control.record(AuditAction.DENIED, principal.label,
                                      "PERMISSION_DENIED on GetPolicy: may not read secrets",
                                      peer=peer)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"{principal.label} may not read secrets (the "
                                "read-secrets role allows it)")
        store = self.control.store
        found = await _or_unavailable(context, asyncio.to_thread(
            lambda: store.get(request.revision) if request.revision else store.latest()))
        if found is None:
            what = f"revision {request.revision}" if request.revision else "any revision"
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no policy: {what} does not exist")
        assert found is not None
        yaml_text = found.yaml if request.show_secrets else redact_policy(found.yaml)
        return center_pb2.GetPolicyResponse(revision=revision_info(found), yaml=yaml_text)

    async def ListRevisions(self, request: center_pb2.ListRevisionsRequest,
                            context: grpc.aio.ServicerContext
                            ) -> center_pb2.ListRevisionsResponse:
        await self._admin(context, "ListRevisions")
        history = await _or_unavailable(context, asyncio.to_thread(
            self.control.store.history, request.limit or None))
        return center_pb2.ListRevisionsResponse(revisions=[revision_info(r) for r in history])

    async def ListNodes(self, request: center_pb2.ListNodesRequest,
                        context: grpc.aio.ServicerContext
                        ) -> center_pb2.ListNodesResponse:
        await self._admin(context, "ListNodes")
        return center_pb2.ListNodesResponse(nodes=self.control.nodes.statuses(),
                                            latest_revision=self.control.book.revision)

    async def ListAuditEvents(self, request: center_pb2.ListAuditEventsRequest,
                              context: grpc.aio.ServicerContext
                              ) -> center_pb2.ListAuditEventsResponse:
        await self._admin(context, "ListAuditEvents")
        events = await _or_unavailable(context, asyncio.to_thread(
            self.control.store.audit_events, request.limit or None))
        return center_pb2.ListAuditEventsResponse(
            events=[audit_event_message(e) for e in events])

    async def Explain(self, request: center_pb2.ExplainRequest,
                      context: grpc.aio.ServicerContext) -> center_pb2.ExplainResponse:
        await self._admin(context, "Explain")
        try:
            found = self.control.explain(request.caller, request.method, request.revision)
        except LookupError as missing:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(missing))
        except ValueError as bad:  # ExplainError, or a revision that no longer validates
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(bad))
        return explain_response(found)

    async def PreviewPolicy(self, request: center_pb2.PreviewPolicyRequest,
                            context: grpc.aio.ServicerContext
                            ) -> center_pb2.PreviewPolicyResponse:
        await self._admin(context, "PreviewPolicy")
        try:
            found, latest = self.control.preview(request.yaml, request.revision)
        except PolicyError as refused:
            return center_pb2.PreviewPolicyResponse(errors=refused.errors)
        except LookupError as missing:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(missing))
        return center_pb2.PreviewPolicyResponse(
            latest_revision=latest, changed=found.changed, diff=found.diff,
            nodes_to_update=[center_pb2.PreviewNode(node_id=n.node_id, role=n.role,
                                                    service=n.service)
                             for n in sorted(found.nodes_to_update,
                                             key=lambda n: (n.service, n.role, n.node_id))],
            nodes_unchanged=found.nodes_unchanged, removed_services=found.removed_services,
            removed_services_with_nodes=found.removed_services_with_nodes)

    async def RotateKey(self, request: center_pb2.RotateKeyRequest,
                        context: grpc.aio.ServicerContext) -> center_pb2.RotateKeyResponse:
        principal = await self._admin(context, "RotateKey")
        try:
            new_type = KeyType(request.new_type) if request.new_type else None
        except ValueError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"unknown key type {request.new_type!r}")
        try:
            if not request.advance:
                rotation = await self.control.rotation_phase(request.key)
                return center_pb2.RotateKeyResponse(key=rotation.key,
                                                    successor=rotation.successor,
                                                    phase=rotation.phase.value)
            rotation, outcome = await self.control.rotate_step(
                request.key, new_type, principal.label, peer=self.auth.peer(context))
        except RotationError as refused:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(refused))
        return center_pb2.RotateKeyResponse(key=rotation.key, successor=rotation.successor,
                                            phase=rotation.phase.value,
                                            applied=_apply_response(outcome))

    async def GetCenterInfo(self, request: center_pb2.GetCenterInfoRequest,
                            context: grpc.aio.ServicerContext
                            ) -> center_pb2.GetCenterInfoResponse:
        return center_pb2.GetCenterInfoResponse(
            public_key=self.control.book.public_key,
            latest_revision=self.control.book.revision,
            development_mode=self.auth.development,
        )

    # -- watch -------------------------------------------------------------------------------

    async def WatchPolicy(self, request_iterator: AsyncIterator[center_pb2.WatchRequest],
                          context: grpc.aio.ServicerContext
                          ) -> None:
        principal = self.auth.identify(context)
        peer = self.auth.peer(context)
        if isinstance(principal, Refused):
            # The node's hello is read first: a refusal sent while the node still writes it
            # reaches the node as INTERNAL "Internal error from Core" instead of this status
            # (grpc/grpc#36066). It also names the node in the log line.
            node = await _hello_node_id(request_iterator)
            log.warning("watch refused from %s%s: %s", peer, f" (node {node})" if node else "",
                        principal.reason)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                f"no valid node credential: {principal.reason}")
        assert isinstance(principal, Principal)
        try:
            first = await asyncio.wait_for(anext(request_iterator), HELLO_TIMEOUT_S)
        except (StopAsyncIteration, TimeoutError):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "the first message must be a hello")
        hello = first.hello
        if first.WhichOneof("kind") != "hello" or not hello.node_id or not hello.service:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "the first message must be a hello with node_id and service")
        if hello.role not in ROLES:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "role must be in, out, client or app")
        if not (_plain(hello.node_id) and _plain(hello.service)):
            # they go into log lines and the node list: no line of a caller's own making
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"node_id and service must be printable text of at most "
                                f"{MAX_NAME_CHARS} characters")
        refusal = principal.watch_refusal(hello.service, hello.role)
        if refusal is not None:
            log.warning("watch refused from %s (node %s): %s", peer, hello.node_id, refusal)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
        if self.stopping:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "center shutting down; reconnect")
        if not self.control.reachable:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                "this Center replica cannot reach its store "
                                f"({self.control.unreachable_reason}); use another replica")

        # headers now: the node knows its hello was taken even if it holds the latest
        # revision already and no snapshot follows
        await context.send_initial_metadata(())
        # The credential again, as the token files stand now: one removed while the Center
        # waited for the hello must not be sent a snapshot (no await from here until the
        # stream is registered for `recheck_credentials`).
        principal = self.auth.identify(context)
        refusal = (principal.reason if isinstance(principal, Refused)
                   else principal.watch_refusal(hello.service, hello.role))
        if refusal is not None:
            log.warning("watch refused from %s (node %s): %s", peer, hello.node_id, refusal)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED
                                if isinstance(principal, Refused)
                                else grpc.StatusCode.PERMISSION_DENIED, refusal)
        session = NodeSession(hello.node_id, hello.role, hello.service, self.auth.peer(context),
                              time.time(), sent_revision=hello.known_revision,
                              sent_hash=hello.known_hash,
                              # replicas share one revision counter: a node that holds N from
                              # one of them must not get less than N from another
                              floor_revision=(hello.known_revision
                                              if self.control.store.shared else 0))
        if hello.known_hash:
            session.acked_revision, session.acked_hash = hello.known_revision, hello.known_hash
        token = self.auth.bearer_token(context)
        if token is not None:
            self._tokens[session] = token
        self.control.node_connected(session)
        log.info("node %s (%s, %s) connected from %s holding revision %d", hello.node_id,
                 policy_pb2.Role.Name(hello.role), hello.service, session.peer,
                 hello.known_revision)
        reader = asyncio.create_task(self._read_node(session, request_iterator))
        try:
            await self._push(session, context, reader)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            self._tokens.pop(session, None)
            self.control.node_disconnected(session)
            log.info("node %s (%s) disconnected", session.node_id, session.service)

    async def _push(self, session: NodeSession,
                    context: grpc.aio.ServicerContext,
                    reader: asyncio.Task[None]) -> None:
        """Sends the node's snapshot whenever what it sees changes, until either side ends
        (or the stream reaches its maximum age)."""
        book = self.control.book
        session.changed.set()
        deadline = None
        if self.max_stream_age_s:
            deadline = time.monotonic() + self.max_stream_age_s * random.uniform(0.75, 1.0)
        while True:
            waiter = asyncio.ensure_future(session.changed.wait())
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0)
            try:
                done, _ = await asyncio.wait({waiter, reader}, timeout=timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                # the stream may end (or be cancelled) while waiting: never leave the
                # waiter pending ("Task was destroyed but it is pending")
                if not waiter.done():
                    waiter.cancel()
            if reader in done:
                return
            if not done:
                await context.abort(grpc.StatusCode.UNAVAILABLE,
                                    "watch stream reached its maximum age; reconnect")
            session.changed.clear()
            if session.closing:
                await context.abort(grpc.StatusCode.UNAVAILABLE, session.closing)
            if session.revoked:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                    f"credential revoked: {session.revoked}")
            signed = book.snapshot_for(session.role, session.service)
            if signed is None or signed.content_hash == session.sent_hash:
                continue
            if book.revision < session.floor_revision:
                continue  # this replica is behind the node: wait until it catches up
            await context.write(center_pb2.WatchResponse(snapshot=signed))
            session.sent_revision, session.sent_hash = book.revision, signed.content_hash

    async def _read_node(self, session: NodeSession,
                         requests: AsyncIterator[center_pb2.WatchRequest]) -> None:
        nodes, metrics = self.control.nodes, self.control.metrics
        async for request in requests:
            kind = request.WhichOneof("kind")
            if kind == "ack":
                previous = session.acked_revision
                session.acked_revision = request.ack.revision
                session.acked_hash = request.ack.content_hash
                metrics.node_acked(session, previous)
                self.control.refresh(session)
            elif kind == "nack":
                session.nacked_revision = request.nack.revision
                error = request.nack.error[:1000]
                session.nack_error = error if error.isprintable() else repr(error)
                log.warning("node %s NACKed revision %d: %s", session.node_id,
                            request.nack.revision, session.nack_error)
                metrics.node_nacked(session)
            elif (kind == "register" and session.role == policy_pb2.ROLE_IN
                  and request.register.address):
                nodes.register(session, request.register.address, request.register.lease_seconds)

    def recheck_credentials(self) -> None:
        """After the token files changed: ends the streams whose token no longer allows
        them, so a revoked node is sent nothing more."""
        for session in self.control.nodes:
            token = self._tokens.get(session)
            reason = None if token is None else self.auth.recheck(token, session.service,
                                                                  session.role)
            if reason is not None:
                log.warning("watch of node %s (%s) from %s ended: %s", session.node_id,
                            session.service, session.peer, reason)
                session.revoked = reason
                session.changed.set()

    def close_streams(self) -> None:
        """Ends every Watch stream with UNAVAILABLE so nodes reconnect (to us or a peer)."""
        self.stopping = True
        self.control.close_streams("center shutting down; reconnect")


MAX_NAME_CHARS = 128


def _plain(text: str) -> bool:
    """A node's name or service as it may appear in a log line: printable, not too long."""
    return 0 < len(text) <= MAX_NAME_CHARS and text.isprintable()


async def _hello_node_id(requests: AsyncIterator[center_pb2.WatchRequest]) -> str:
    """The node id of a refused caller's first message, read for at most
    REFUSED_HELLO_WAIT_S ("" if none came, or it was not a hello)."""
    try:
        first = await asyncio.wait_for(anext(requests), REFUSED_HELLO_WAIT_S)
    except (StopAsyncIteration, TimeoutError, grpc.RpcError):
        return ""
    if first.WhichOneof("kind") != "hello":
        return ""
    node_id = first.hello.node_id[:128]
    return node_id if node_id.isprintable() else repr(node_id)  # from a caller not trusted
