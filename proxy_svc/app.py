"""Runs one proxy process: policy source, forwarding server, health, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fastproxy.node.source import PolicySourceError, open_policy_source
from fastproxy.node.watch import NodeIdentity, PolicyHolder
from fastproxy.pipeline.node_policy import NodePolicy, NodeState
from fastproxy.telemetry.metrics import ProxyMetrics
from fastproxy.telemetry.setup import TelemetryConfigError, configure_telemetry
from fastproxy.v1 import policy_pb2 as pb
from proxy_svc.config import ProxyConfig
from proxy_svc.forward import ForwardingHandler, InboundRole, OutboundRole, start_proxy_server
from proxy_svc.kinds import MethodKinds, ReflectionLearner
from proxy_svc.observe import CallObserver
from proxy_svc.tunnel import Tunnels, TunnelService, tunnel_channel_options
from proxy_svc.upstream import UpstreamPool

log = logging.getLogger("proxy_svc")


class StartupError(Exception):
    pass


def compile_snapshot(snapshot: pb.PolicySnapshot, max_message_bytes: int) -> NodePolicy:
    return NodePolicy.from_snapshot(snapshot, max_message_bytes=max_message_bytes)


def _server_credentials(config: ProxyConfig) -> grpc.ServerCredentials | None:
    if not (config.tls_cert and config.tls_key):
        return None
    return grpc.ssl_server_credentials([(config.tls_key, config.tls_cert)],
                                       root_certificates=config.tls_ca,
                                       require_client_auth=config.tls_ca is not None)


def _upstream_credentials(config: ProxyConfig) -> grpc.ChannelCredentials | None:
    """The out-proxy's hop to in-proxies is mutual TLS when this node has a certificate of
    its own (in-proxies then serve TLS too); `--tls-ca` alone only verifies the Center. The
    in-proxy's hop to its own service stays plaintext (same host)."""
    if config.role != "out" or not config.tls_cert:
        return None
    return grpc.ssl_channel_credentials(root_certificates=config.tls_ca,
                                        private_key=config.tls_key,
                                        certificate_chain=config.tls_cert)


def _call_observer(config: ProxyConfig, holder: PolicyHolder[NodePolicy],
                   source: object) -> CallObserver:
    """Telemetry from the OTEL_* environment and --metrics-port; audit lines always."""
    telemetry = configure_telemetry(
        f"fastproxy-{config.role}-proxy", metrics_port=config.metrics_port,
        metrics_host=config.listen.rpartition(":")[0].strip("[]") or "127.0.0.1")

    def revision() -> int:
        return holder.revision

    metrics = None
    meter = telemetry.meter("fastproxy.proxy")
    if meter is not None and telemetry.aggregated is not None:
        reconnects = getattr(source, "reconnects", None)
        metrics = ProxyMetrics(
            config.role, meter, telemetry.aggregated, revision=revision,
            reconnects=(lambda: int(getattr(source, "reconnects", 0)))
            if reconnects is not None else None)
    return CallObserver.with_tracer(config.role, config.service, revision,
                                    telemetry.tracer("fastproxy.proxy"), metrics,
                                    telemetry.shortcut)


async def serve(config: ProxyConfig) -> None:
    """Runs until SIGTERM or SIGINT, then drains within the grace period."""
    holder: PolicyHolder[NodePolicy] = PolicyHolder()
    node = NodeIdentity(config.node_id, config.role_pb, config.service,
                        advertise=config.advertise if config.role == "in" else "")
    compile_ = functools.partial(compile_snapshot, max_message_bytes=config.max_message_bytes)
    try:
        source = open_policy_source(
            node, compile_, holder, center=config.center, policy_file=config.policy_file,
            credentials=config.center_credentials, pinned_key=config.center_public_key,
            cache_dir=config.cache_dir, file_poll_s=config.policy_poll_s)
    except PolicySourceError as exc:
        raise StartupError(str(exc)) from None

    try:
        observer = _call_observer(config, holder, source)
    except (TelemetryConfigError, OSError) as exc:
        raise StartupError(f"telemetry: {exc}") from None
    pool = UpstreamPool(config.max_message_bytes, _upstream_credentials(config))
    role = (InboundRole(holder, config.upstream or "", NodeState()) if config.role == "in"
            else OutboundRole(holder))
    # Unary methods take the fast path once known: the in-proxy asks its upstream's
    # reflection, the out-proxy hears it from the in-proxy (proxy_svc.kinds).
    kinds = MethodKinds()
    upstream = config.upstream or ""
    learner = (ReflectionLearner(kinds, lambda: pool.channel(upstream))
               if config.role == "in" else None)
    # The out-proxy carries fast-path calls over one stream per in-proxy (proxy_svc.tunnel),
    # on connections of their own; the in-proxy serves those streams.
    tunnels = None
    if config.role == "out" and config.tunnel:
        options = tunnel_channel_options(config.max_message_bytes)
        tunnels = Tunnels(lambda endpoint: pool.separate_channel(endpoint, options))
    handler = ForwardingHandler(role, pool, observer=observer, kinds=kinds, learner=learner,
                                tunnels=tunnels)
    tunnel_service = (TunnelService(handler.serve_carried, accept=config.tunnel)
                      if config.role == "in" else None)
    health_servicer = health.aio.HealthServicer()

    def add_health(server: grpc.aio.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    try:
        server, port = await start_proxy_server(
            config.listen, handler, config.max_message_bytes,
            credentials=_server_credentials(config), add_services=add_health,
            services_first=() if tunnel_service is None else (tunnel_service,))
    except RuntimeError as exc:
        raise StartupError(f"cannot listen on {config.listen}: {exc}") from None
    if port == 0:
        raise StartupError(f"cannot listen on {config.listen}")

    # SERVING only once a policy is in force; until then calls get `unavailable`.
    await health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)

    async def serving_once_loaded() -> None:
        await holder.loaded.wait()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)

    host = config.listen.rpartition(":")[0]
    log.info("%s-proxy for %s listening on %s:%d (%s)", config.role, config.service, host, port,
             f"center {config.center}" if config.center else f"policy {config.policy_file}")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    tasks = [asyncio.create_task(source.run()), asyncio.create_task(serving_once_loaded())]
    try:
        await stop.wait()
    finally:
        log.info("stopping: draining in-flight calls for up to %.1f s", config.grace_s)
        await health_servicer.enter_graceful_shutdown()
        if tunnel_service is not None:
            tunnel_service.go_away()
        await server.stop(config.grace_s)
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if learner is not None:
            await learner.close()
        if tunnels is not None:
            await tunnels.close()
        await pool.close()
        log.info("stopped")
