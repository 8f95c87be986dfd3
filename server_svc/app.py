"""Runs `python -m server_svc`: the demo services, health, reflection, embedded checks and a
graceful stop."""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fastproxy.hosting.service_main import (
    EXCLUSIVE_PORT,
    serve_until_stopped,
    stop_on_signals,
    why_not_listening,
)
from fastproxy.node.source import PolicySourceError
from fastproxy.pipeline.node_policy import NodePolicy
from fastproxy.server import AioSealingServerInterceptor, EmbeddedPolicy
from fastproxy.telemetry.setup import Telemetry
from server_svc.config import ServerConfig
from server_svc.demo import DEMO_SERVICE_NAMES, add_demo_services

log = logging.getLogger("server_svc")


class StartupError(Exception):
    pass


def _embedded_policy(config: ServerConfig) -> EmbeddedPolicy | None:
    node = config.node
    if node.service is None:
        return None
    try:
        return EmbeddedPolicy(
            service=node.service, center=node.center, policy_file=node.policy_file,
            node_id=node.node_id, credentials=node.center_credentials,
            advertise=node.advertise if node.center else "", cache_dir=node.cache_dir,
            pinned_key=node.center_public_key, max_message_bytes=node.max_message_bytes,
            clock_skew_s=node.clock_skew_s, max_sessions=node.max_sessions)
    except PolicySourceError as exc:
        raise StartupError(str(exc)) from None


def _interceptors(telemetry: Telemetry, policy: EmbeddedPolicy | None
                  ) -> list[grpc.aio.ServerInterceptor]:
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if telemetry.tracer_provider is not None:
        # The server's SERVER span, a child of the in-proxy's (W3C traceparent), from the
        # instrumentation package: here the handlers are per method, which it fits.
        from opentelemetry.instrumentation.grpc import aio_server_interceptor

        interceptors.append(aio_server_interceptor(  # type: ignore[no-untyped-call]
            tracer_provider=telemetry.tracer_provider))
    if policy is not None:
        interceptors.append(AioSealingServerInterceptor(policy))
    return interceptors


async def _serving_once_loaded(policy: EmbeddedPolicy | None,
                               health_servicer: health.aio.HealthServicer) -> None:
    """Embedded: SERVING only once a policy is in force; until then calls get `unavailable`."""
    serving_names = ("", *DEMO_SERVICE_NAMES)
    for name in serving_names:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    if policy is not None:
        loop = asyncio.get_running_loop()
        loaded = asyncio.Event()

        def on_policy(_policy: NodePolicy) -> None:
            loop.call_soon_threadsafe(loaded.set)
        policy.holder.on_change(on_policy)
        if policy.holder.current is not None:
            loaded.set()
        policy.start()
        await loaded.wait()
    for name in serving_names:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


async def serve(config: ServerConfig, telemetry: Telemetry) -> None:
    """Runs until SIGTERM or SIGINT, then drains within the grace period."""
    node = config.node
    policy = _embedded_policy(config)
    limit = node.max_message_bytes
    server = grpc.aio.server(interceptors=_interceptors(telemetry, policy), options=[
        ("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
        EXCLUSIVE_PORT])
    add_demo_services(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*DEMO_SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    try:
        port = server.add_insecure_port(node.listen)
    except RuntimeError:  # grpc: "Failed to bind to address ..."
        port = 0
    if port == 0:
        raise StartupError(f"cannot listen on {node.listen}: {why_not_listening(node.listen)}")
    await server.start()
    serving = asyncio.create_task(_serving_once_loaded(policy, health_servicer))

    mode = "plaintext"
    if config.service is not None:
        source = f"center {node.center}" if node.center else f"policy {node.policy_file}"
        mode = f"embedded as {config.service}, {source}"
    log.info("server listening on %s:%d (%s)", node.listen.rpartition(":")[0], port, mode)
    await serve_until_stopped(stop_on_signals(), server, health_servicer, node.grace_s, log,
                              tasks=[serving], telemetry=telemetry)
    if policy is not None:
        await asyncio.to_thread(policy.stop)
    log.info("stopped")
