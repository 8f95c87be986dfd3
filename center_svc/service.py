"""gRPC glue of `fastproxy.v1.Center`: authentication, admin RPCs and the WatchPolicy stream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import grpc

from center_svc.auth import Authenticator, Principal, Refused
from center_svc.control import ApplyOutcome, PolicyControl
from center_svc.nodes import NodeSession
from center_svc.store import AuditAction, AuditEvent, Revision
from fastproxy.policy.redaction import redact_policy
from fastproxy.v1 import center_pb2, center_pb2_grpc, policy_pb2

log = logging.getLogger("center_svc.watch")

ROLES = (policy_pb2.ROLE_IN, policy_pb2.ROLE_OUT, policy_pb2.ROLE_CLIENT, policy_pb2.ROLE_APP)
HELLO_TIMEOUT_S = 10.0


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


def _apply_response(outcome: ApplyOutcome) -> center_pb2.ApplyPolicyResponse:
    response = center_pb2.ApplyPolicyResponse(
        applied=outcome.applied, errors=outcome.errors, message=outcome.message
    )
    if outcome.revision is not None:
        response.revision.CopyFrom(revision_info(outcome.revision))
    return response


class CenterServicer(center_pb2_grpc.CenterServicer):
    def __init__(self, control: PolicyControl, auth: Authenticator) -> None:
        self.control = control
        self.auth = auth
        self.stopping = False
        self._tokens: dict[NodeSession, bytes] = {}  # the token each stream was opened with

    # -- admin -------------------------------------------------------------------------------

    async def _admin(self, context: grpc.aio.ServicerContext, method: str) -> Principal:
        """The caller's principal if it is an administrator; otherwise the call is aborted
        and the refusal is an audit event (`denied`, actor `anonymous` without a valid
        credential)."""
        principal = self.auth.identify(context)
        peer = context.peer()
        if isinstance(principal, Refused):
            log.warning("admin call %s refused from %s: %s", method, peer, principal.reason)
            await self.control.record(AuditAction.DENIED, "anonymous",
                                      f"UNAUTHENTICATED on {method}: no valid credential "
                                      f"({principal.reason})", peer=peer)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no valid credential")
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
        outcome = await self.control.apply(request.yaml, principal.label, request.comment,
                                           peer=context.peer())
        return _apply_response(outcome)

    async def RollbackPolicy(self, request: center_pb2.RollbackPolicyRequest,
                             context: grpc.aio.ServicerContext
                             ) -> center_pb2.ApplyPolicyResponse:
        principal = await self._admin(context, "RollbackPolicy")
        outcome = await self.control.rollback(request.revision, principal.label, request.comment,
                                              peer=context.peer())
        if outcome.revision is None and outcome.errors:
            await context.abort(grpc.StatusCode.NOT_FOUND, outcome.errors[0])
        return _apply_response(outcome)

    async def GetPolicy(self, request: center_pb2.GetPolicyRequest,
                        context: grpc.aio.ServicerContext
                        ) -> center_pb2.GetPolicyResponse:
        principal = await self._admin(context, "GetPolicy")
        if request.show_secrets and not principal.may_read_secrets:
            peer = context.peer()
            log.warning("GetPolicy with secrets refused for %s from %s", principal.label, peer)
            await self.control.record(AuditAction.DENIED, principal.label,
                                      "PERMISSION_DENIED on GetPolicy: may not read secrets",
                                      peer=peer)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"{principal.label} may not read secrets (the "
                                "read-secrets role allows it)")
        store = self.control.store
        found = store.get(request.revision) if request.revision else store.latest()
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
        history = self.control.store.history(request.limit or None)
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
        events = await asyncio.to_thread(self.control.store.audit_events, request.limit or None)
        return center_pb2.ListAuditEventsResponse(
            events=[audit_event_message(e) for e in events])

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
        peer = context.peer()
        if isinstance(principal, Refused):
            log.warning("watch refused from %s: %s", peer, principal.reason)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no valid node credential")
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
        refusal = principal.watch_refusal(hello.service, hello.role)
        if refusal is not None:
            log.warning("watch refused from %s (node %s): %s", peer, hello.node_id, refusal)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
        if self.stopping:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "center shutting down; reconnect")

        session = NodeSession(hello.node_id, hello.role, hello.service, context.peer(),
                              time.time(), sent_revision=hello.known_revision,
                              sent_hash=hello.known_hash)
        if hello.known_hash:
            session.acked_revision, session.acked_hash = hello.known_revision, hello.known_hash
        token = self.auth.bearer_token(context)
        if token is not None:
            self._tokens[session] = token
        nodes, metrics = self.control.nodes, self.control.metrics
        nodes.add(session)
        metrics.node_connected(session)
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
            nodes.remove(session)
            self._tokens.pop(session, None)
            metrics.node_disconnected(session)
            log.info("node %s (%s) disconnected", session.node_id, session.service)

    async def _push(self, session: NodeSession,
                    context: grpc.aio.ServicerContext,
                    reader: asyncio.Task[None]) -> None:
        """Sends the node's snapshot whenever what it sees changes, until either side ends."""
        book = self.control.book
        session.changed.set()
        while True:
            waiter = asyncio.ensure_future(session.changed.wait())
            try:
                done, _ = await asyncio.wait({waiter, reader},
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                # the stream may end (or be cancelled) while waiting: never leave the
                # waiter pending ("Task was destroyed but it is pending")
                if not waiter.done():
                    waiter.cancel()
            if reader in done:
                return
            session.changed.clear()
            if session.closing:
                await context.abort(grpc.StatusCode.UNAVAILABLE,
                                    "center shutting down; reconnect")
            if session.revoked:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                    f"credential revoked: {session.revoked}")
            signed = book.snapshot_for(session.role, session.service)
            if signed is None or signed.content_hash == session.sent_hash:
                continue
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
            elif kind == "nack":
                session.nacked_revision = request.nack.revision
                session.nack_error = request.nack.error[:1000]
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
        for session in self.control.nodes:
            session.closing = True
            session.changed.set()
