"""Runs the Center: the gRPC server, health, reflection, the policy file and lease expiry."""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from center_svc.auth import Authenticator, TokenFiles
from center_svc.config import CenterConfig, token_files
from center_svc.control import PolicyControl
from center_svc.kek import KekError
from center_svc.policy_file import PolicyFileWatcher
from center_svc.sealed_policy import SealedStore, plain_secret_paths
from center_svc.secretbox import PLAINTEXT_BOX, KekBox
from center_svc.service import CenterServicer
from center_svc.snapshots import SnapshotBook
from center_svc.store import PolicyStore, StoreError, StoreOptions, open_store
from center_svc.tls_listener import PassedConnections, TlsListener, server_context
from fastproxy.hosting.service_main import (
    EXCLUSIVE_PORT,
    serve_until_stopped,
    stop_on_signals,
    why_not_listening,
)
from fastproxy.telemetry.setup import TELEMETRY_OFF, Telemetry
from fastproxy.v1 import center_pb2, center_pb2_grpc

log = logging.getLogger("center_svc")

CENTER_SERVICE = center_pb2.DESCRIPTOR.services_by_name["Center"].full_name
LEASE_CHECK_S = 1.0


class StartupError(Exception):
    pass


def _open_control(config: CenterConfig) -> tuple[PolicyStore, PolicyControl]:
    # A shared store (etcd) keeps the signing key sealed by this box: the KEK's, or
    # development mode's pass-through.
    box = PLAINTEXT_BOX if config.kek is None else KekBox(config.kek)
    options = StoreOptions(etcd_credentials=config.etcd_credentials, secret_box=box,
                           registration_ttl_s=config.registration_ttl_s,
                           open_timeout_s=config.store_wait_s)
    try:
        backend = open_store(config.store, options)
    except (ValueError, OSError) as exc:
        raise StartupError(f"--store {config.store}: {exc}") from None
    except StoreError as exc:
        raise StartupError(str(exc)) from None
    store = SealedStore(backend, config.kek)
    try:
        key = Ed25519PrivateKey.from_private_bytes(store.signing_key_seed())
        control = PolicyControl(store, SnapshotBook(key))
        control.load_latest()
        control.restore_registry()
    except StoreError as exc:
        store.close()
        raise StartupError(str(exc)) from None
    except KekError as exc:
        store.close()
        raise StartupError(f"--store {config.store}: {exc}") from None
    except ValueError as exc:
        store.close()
        raise StartupError(f"stored policy no longer validates: {exc}") from None
    _say_how_secrets_are_kept(config, store)
    return store, control


def _say_how_secrets_are_kept(config: CenterConfig, store: SealedStore) -> None:
    if config.kek is None:
        log.warning("no --kek: policy secrets are kept unencrypted in the store %s",
                    config.store)
        return
    log.info("policy secrets in the store are sealed with KEK %s", config.kek.primary.key_id)
    latest = store.stored_latest()
    plain = plain_secret_paths(latest.yaml) if latest is not None else []
    if latest is not None and plain:
        log.warning("revision %d holds %d secret(s) stored before --kek was given "
                    "(unencrypted); the next apply stores them sealed", latest.revision,
                    len(plain))


def _listen(server: grpc.aio.Server, config: CenterConfig) -> TlsListener | None:
    """Binds the gRPC server: on `--listen` itself (plaintext, or gRPC's TLS), or, when the
    Center takes client certificates, on a loopback port behind a TLS listener of ours (which
    asks for a certificate without requiring one; returned, not yet started)."""
    if config.client_ca and config.tls_files:
        try:
            context = server_context(*config.tls_files, config.client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise StartupError(f"--tls-cert/--tls-key/--client-ca: cannot be loaded "
                               f"({exc})") from None
        port = server.add_insecure_port("127.0.0.1:0")
        return TlsListener(config.listen, context, port, PassedConnections())
    if config.tls_cert and config.tls_key:
        credentials = grpc.ssl_server_credentials([(config.tls_key, config.tls_cert)])
        add = functools.partial(server.add_secure_port, config.listen, credentials)
    else:
        add = functools.partial(server.add_insecure_port, config.listen)
    try:
        port = add()
    except RuntimeError:  # grpc: "Failed to bind to address ..."
        port = 0
    if port == 0:
        raise StartupError(f"cannot listen on {config.listen}: "
                           f"{why_not_listening(config.listen)}")
    return None


async def _start_listener(listener: TlsListener | None, config: CenterConfig) -> None:
    if listener is None:
        return
    try:
        await listener.start()
    except OSError as exc:
        raise StartupError(f"cannot listen on {config.listen}: {exc.strerror or exc}") from None
    log.info("client certificates from --client-ca are asked for, not required: a call "
             "is authenticated by its bearer token, else by its certificate (the gRPC server "
             "behind the TLS listener is on 127.0.0.1:%d and takes no call but through it)",
             listener.inner_port)


async def serve(config: CenterConfig, telemetry: Telemetry = TELEMETRY_OFF,
                ready: asyncio.Event | None = None) -> None:
    """Runs until SIGTERM or SIGINT, then drains within the grace period. (The Center's
    metrics go to the global meter provider `telemetry` installed.)"""
    store, control = _open_control(config)
    watcher = None
    if config.policy_file:
        watcher = PolicyFileWatcher(config.policy_file, control, config.policy_poll_s)
        if await watcher.apply_if_changed() is False:
            raise StartupError(f"--policy {config.policy_file} refused (errors logged above)")

    tokens = token_files(config)
    server = grpc.aio.server(options=[EXCLUSIVE_PORT])
    listener = _listen(server, config)
    table = tokens.load()
    table.warn_every_role()
    auth = Authenticator(development=config.development, tokens=table,
                         passed=listener.passed if listener is not None else None)
    servicer = CenterServicer(control, auth, max_stream_age_s=config.watch_max_age_s)
    center_pb2_grpc.add_CenterServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (CENTER_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    # before SERVING is reported: a SIGTERM sent as soon as we are healthy must stop us cleanly
    stop = stop_on_signals()
    await server.start()
    await _start_listener(listener, config)
    for name in ("", CENTER_SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if config.development:
        log.warning("development mode: no credentials configured; listening on loopback only "
                    "and trusting every local caller")
    log.info("center listening on %s (store %s, revision %d)", config.listen, config.store,
             control.book.revision)

    if store.shared:
        control.reachability_listeners.append(
            lambda reachable: _set_health(health_servicer, reachable))
        control.follow()
    tasks = [asyncio.create_task(_expire_leases(control)),
             asyncio.create_task(_reload_tokens(tokens, servicer, config.policy_poll_s))]
    if watcher is not None:
        tasks.append(asyncio.create_task(watcher.run()))
    if ready is not None:
        ready.set()
    def draining() -> None:
        # Watch streams end with UNAVAILABLE at once, so that nodes reconnect elsewhere.
        servicer.close_streams()
        if listener is not None:
            listener.stop_accepting()

    await serve_until_stopped(stop, server, health_servicer, config.grace_s, log, tasks=tasks,
                              draining=draining, telemetry=telemetry)
    if listener is not None:
        await listener.close()
    store.close()
    log.info("stopped")


_health_updates: set[asyncio.Task[None]] = set()


def _set_health(health_servicer: health.aio.HealthServicer, reachable: bool) -> None:
    """A replica cut off from its store reports NOT_SERVING (to load balancers, probes)."""
    status = (health_pb2.HealthCheckResponse.SERVING if reachable
              else health_pb2.HealthCheckResponse.NOT_SERVING)

    async def update() -> None:
        for name in ("", CENTER_SERVICE):
            await health_servicer.set(name, status)

    task = asyncio.get_running_loop().create_task(update())
    _health_updates.add(task)
    task.add_done_callback(_health_updates.discard)


async def _reload_tokens(files: TokenFiles, servicer: CenterServicer, interval_s: float
                         ) -> None:
    """Token files take effect when they change: a new service's nodes get in without a
    restart; a token removed (or its roles narrowed) ends the streams it opened."""
    while True:
        await asyncio.sleep(interval_s)
        table = await asyncio.to_thread(files.reload_if_changed)
        if table is not None:
            servicer.auth.tokens = table
            servicer.recheck_credentials()


async def _expire_leases(control: PolicyControl) -> None:
    while True:
        await asyncio.sleep(LEASE_CHECK_S)
        control.nodes.expire_leases()
