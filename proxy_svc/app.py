"""Runs one proxy process: policy source, forwarding server, health, graceful stop."""

from __future__ import annotations

import asyncio
import functools
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fastproxy.hosting.commandline import is_loopback
from fastproxy.hosting.refusal import HostRole
from fastproxy.hosting.service_main import serve_until_stopped, stop_on_signals
from fastproxy.node.holder import PolicyHolder
from fastproxy.node.source import PolicySource, PolicySourceError, open_policy_source
from fastproxy.node.watch import NodeIdentity
from fastproxy.pipeline.node_policy import NodePolicy, NodeState
from fastproxy.telemetry.setup import Telemetry
from fastproxy.v1 import policy_pb2 as pb
from proxy_svc.config import ProxyConfig
from proxy_svc.forward import ForwardingHandler
from proxy_svc.kinds import KindExchange, KindListener, KindTeller, MethodKinds, ReflectionLearner
from proxy_svc.observe import CallObserver
from proxy_svc.plan import InboundRole, OutboundRole, Role
from proxy_svc.server import start_proxy_server
from proxy_svc.sessions import SessionBook, SessionService
from proxy_svc.tunnel import Tunnels, TunnelService, tunnel_channel_options
from proxy_svc.upstream import UpstreamPool

log = logging.getLogger("proxy_svc")


class StartupError(Exception):
    pass


def compile_snapshot(snapshot: pb.PolicySnapshot, max_message_bytes: int,
                     clock_ahead_s: float) -> NodePolicy:
    return NodePolicy.from_snapshot(snapshot, max_message_bytes=max_message_bytes,
                                    clock_ahead_s=clock_ahead_s)


def _server_credentials(config: ProxyConfig) -> grpc.ServerCredentials | None:
    tls = config.listener_tls
    if tls is None:
        return None
    return grpc.ssl_server_credentials([(tls.key, tls.cert)], root_certificates=tls.client_ca,
                                       require_client_auth=tls.client_ca is not None)


def _upstream_credentials(config: ProxyConfig) -> grpc.ChannelCredentials | None:
    """The out-proxy's hop to in-proxies: mutual TLS with `--peer-tls-*`. The in-proxy's hop
    to its own service stays plaintext (same host)."""
    tls = config.peer_tls
    if config.role is not HostRole.OUT or tls is None:
        return None
    return grpc.ssl_channel_credentials(root_certificates=tls.ca, private_key=tls.key,
                                        certificate_chain=tls.cert)


def _transport_summary(config: ProxyConfig) -> str:
    """What protects this proxy's listener and its hop to in-proxies, for the start line."""
    tls = config.listener_tls
    listener = ("plaintext" if tls is None else "TLS, client certificates required"
                if tls.client_ca is not None else "TLS")
    if config.role is HostRole.IN:
        return f"listener {listener}"
    peers = "mutual TLS" if config.peer_tls is not None else "plaintext"
    return f"listener {listener}, to in-proxies {peers}"


def _call_observer(config: ProxyConfig, telemetry: Telemetry, holder: PolicyHolder[NodePolicy],
                   source: PolicySource[NodePolicy]) -> CallObserver:
    """Spans and metrics as `telemetry` allows (audit lines are written in any case)."""
    def revision() -> int:
        return holder.revision

    metrics = None
    meter = telemetry.meter("fastproxy.proxy")
    if meter is not None and telemetry.aggregated is not None:
        from fastproxy.telemetry.metrics import ProxyMetrics  # OpenTelemetry's API: only when on

        reconnects = getattr(source, "reconnects", None)
        metrics = ProxyMetrics(
            config.role.value, meter, telemetry.aggregated, revision=revision,
            reconnects=(lambda: int(getattr(source, "reconnects", 0)))
            if reconnects is not None else None)
    return CallObserver.with_tracer(config.role, config.service, revision,
                                    telemetry.tracer("fastproxy.proxy"), metrics,
                                    telemetry.shortcut)


def _open_source(config: ProxyConfig, holder: PolicyHolder[NodePolicy]
                 ) -> PolicySource[NodePolicy]:
    node = NodeIdentity(config.node.node_id, config.role_pb, config.service,
                        advertise=config.node.advertise if config.role is HostRole.IN else "")
    compile_ = functools.partial(compile_snapshot, max_message_bytes=config.node.max_message_bytes,
                                 clock_ahead_s=config.node.clock_skew_s)
    try:
        return open_policy_source(
            node, compile_, holder, center=config.node.center, policy_file=config.node.policy_file,
            credentials=config.node.center_credentials, pinned_key=config.node.center_public_key,
            cache_dir=config.node.cache_dir, file_poll_s=config.node.policy_poll_s)
    except PolicySourceError as exc:
        raise StartupError(str(exc)) from None


class _Parts:
    """The role-specific parts of one proxy: its role, what it does about method kinds,
    the tunnels (out-proxy), and the services served before the forwarding handler
    (in-proxy: sessions and the tunnel)."""

    def __init__(self, config: ProxyConfig, holder: PolicyHolder[NodePolicy],
                 pool: UpstreamPool) -> None:
        self.learner: ReflectionLearner | None = None
        self.tunnels: Tunnels | None = None
        self.state = NodeState(max_sessions=config.node.max_sessions)
        kinds = MethodKinds()
        self.side: Role
        self.exchange: KindExchange
        if config.role is HostRole.IN:
            upstream = config.upstream or ""
            self.side = InboundRole(holder, upstream, self.state, config.service)
            for method, is_unary in config.known_kinds:
                kinds.learn(method, is_unary, "--descriptor-set")
            # The in-proxy asks its upstream's reflection and tells its out-proxies.
            self.learner = ReflectionLearner(kinds, lambda: pool.channel(upstream))
            self.exchange = KindTeller(kinds, self.learner)
        else:
            if config.tunnel:
                # Fast-path calls ride one stream per in-proxy, on connections of their own.
                options = tunnel_channel_options(config.node.max_message_bytes)
                self.tunnels = Tunnels(lambda endpoint: pool.separate_channel(endpoint,
                                                                              options))
            self.side = OutboundRole(holder, config.service, pool, SessionBook(),
                                     self.tunnels)
            self.exchange = KindListener(kinds)

    async def close(self) -> None:
        if self.learner is not None:
            await self.learner.close()
        if self.tunnels is not None:
            await self.tunnels.close()


async def serve(config: ProxyConfig, telemetry: Telemetry) -> None:
    """Runs until SIGTERM or SIGINT, then drains within the grace period."""
    holder: PolicyHolder[NodePolicy] = PolicyHolder()
    source = _open_source(config, holder)
    pool = UpstreamPool(config.node.max_message_bytes, _upstream_credentials(config))
    parts = _Parts(config, holder, pool)
    handler = ForwardingHandler(parts.side, pool,
                                observer=_call_observer(config, telemetry, holder, source),
                                exchange=parts.exchange)
    tunnel_service = None
    services_first: tuple[grpc.GenericRpcHandler, ...] = ()
    if config.role is HostRole.IN:
        tunnel_service = TunnelService(handler.serve_carried, accept=config.tunnel)
        services_first = (SessionService(config.service, holder, parts.state), tunnel_service)
    health_servicer = health.aio.HealthServicer()
    try:
        server, port = await start_proxy_server(
            config.node.listen, handler, config.node.max_message_bytes,
            credentials=_server_credentials(config),
            add_services=lambda server: health_pb2_grpc.add_HealthServicer_to_server(
                health_servicer, server),
            services_first=services_first)
    except RuntimeError as exc:
        raise StartupError(f"cannot listen on {config.node.listen}: {exc}") from None
    if port == 0:
        raise StartupError(f"cannot listen on {config.node.listen}")

    # SERVING only once a policy is in force; until then calls get `unavailable`.
    await health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)

    async def serving_once_loaded() -> None:
        await holder.loaded.wait()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)

    node = config.node
    log.info("%s-proxy for %s listening on %s:%d (%s; %s)", config.role.value, config.service,
             node.listen.rpartition(":")[0], port,
             f"center {node.center}" if node.center else f"policy {node.policy_file}",
             _transport_summary(config))
    unauthenticated = config.listener_tls is None or config.listener_tls.client_ca is None
    if config.allow_unauthenticated_apps and unauthenticated and not is_loopback(node.listen):
        log.warning("no client authentication on %s (--allow-unauthenticated-apps): whoever "
                    "reaches this out-proxy calls as %s", node.listen, config.service)
    tasks = [asyncio.create_task(source.run()), asyncio.create_task(serving_once_loaded())]
    await serve_until_stopped(
        stop_on_signals(), server, health_servicer, config.node.grace_s, log, tasks=tasks,
        draining=tunnel_service.go_away if tunnel_service is not None else None,
        telemetry=telemetry)
    await parts.close()
    await pool.close()
    log.info("stopped")
