"""Helpers for the data plane's end-to-end tests: proxies as real processes on loopback.

- `DataplanePolicy`: the YAML policy of these tests, with fresh random keys and knobs.
  song_service (gRPC `test.v1.Echo`, ed25519 identity, AES-256-GCM, gzip above 1 KiB) is
  called by chat_service (all methods), metered_service (rate limit 10 rps, burst 5),
  narrow_service (only `/test.v1.Echo/Unary`); stranger_service has an identity but no rule.
- `start_proxy(...)` runs `python -m proxy_svc` and (by default) waits for SERVING;
  `ProxyProcess.terminate()` sends SIGTERM and returns the exit code.
- `RecordingRelay`: a grpc.aio generic server in the test process, placed at the
  destination's endpoint; it records every request/response message and metadata entry
  (request metadata, response headers, trailers) as raw bytes and relays the call to the
  real in-proxy (optionally flipping a byte of each message, as a man in the middle would).
- Crafted calls with the sans-IO core: `out_node`, `open_session` (a handshake over
  `Session/Open`), `new_call` (an `OutboundCall` sealed here), `made_up_session` (a session
  no callee opened), `reply_of`.
- `call_kind`, `refusal`, `reason_of`: one call of each RPC kind, and the contract's trailers.
- `CenterAdmin`: apply a policy and wait until nodes ACK it, through the admin RPCs.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health_pb2

from fastproxy.pipeline.handshake import OPEN_METHOD, CallerSession, SessionSecrets
from fastproxy.pipeline.metadata import HELLO_KEY, hello_of
from fastproxy.pipeline.node_policy import NodePolicy
from fastproxy.pipeline.records import SESSION_ID_BYTES
from fastproxy.pipeline.stages import OutboundCall
from fastproxy.policy import load_policy
from fastproxy.policy.scope import scope_snapshot
from fastproxy.v1 import center_pb2, center_pb2_grpc, tunnel_pb2
from fastproxy.v1 import policy_pb2 as pb
from proxy_svc.tunnel import CARRY_METHOD
from proxy_svc.upstream import StatusLog
from support.relay import LoopbackRelay
from support.server_helpers import health_status
from support.upstream_app import BIDI, CLIENT_STREAM, SERVER_STREAM, UNARY

MiB = 1024 * 1024
KINDS = ("unary", "client_stream", "server_stream", "bidi")
CLIENT_OPTIONS = (
    ("grpc.max_receive_message_length", 64 * MiB),
    ("grpc.max_send_message_length", 64 * MiB),
)
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 20.0
Metadata = Sequence[tuple[str, str | bytes]]

CALLEE = "song_service"
CALLER = "chat_service"
METERED = "metered_service"
NARROW = "narrow_service"
STRANGER = "stranger_service"


def b64(material: bytes) -> str:
    return "base64:" + base64.b64encode(material).decode()


def ed25519_seed() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
        serialization.NoEncryption())


@dataclass(frozen=True)
class DataplanePolicy:
    """The policy of the data plane tests; `replace(policy, knob=...)` turns a knob."""

    song_endpoints: tuple[str, ...] = ()
    chat_methods: tuple[str, ...] = ("/test.v1.Echo/*",)
    timeout_ms: int = 3000
    enc_key: str = "song-enc-v1"
    enc_accept: tuple[str, ...] = ()
    secret_metadata: tuple[str, ...] = ()  # song_service's own credential metadata names
    chat_rule: bool = True  # False: no rule names chat_service
    song_mode: str = ""  # song_service's `mode` ("" leaves it out: enforce)
    narrow_mode: str = ""  # the `mode` of narrow_service's rule
    secrets: dict[str, bytes] = field(default_factory=lambda: {
        "song-id": ed25519_seed(),
        "song-enc-v1": os.urandom(32),
        "song-enc-v2": os.urandom(32),
        "chat-id": os.urandom(32),
        "metered-id": os.urandom(32),
        "narrow-id": os.urandom(32),
        "stranger-id": os.urandom(32),
    })

    def yaml_text(self) -> str:
        enc_names = (self.enc_key, *(n for n in self.enc_accept if n != self.enc_key))
        lines = ["version: 1", "keys:",
                 f'  song-id: {{type: ed25519, private: "{b64(self.secrets["song-id"])}"}}']
        for name in enc_names:
            lines.append(f'  {name}: {{type: aes-256-gcm, secret: "{b64(self.secrets[name])}"}}')
        for name in ("chat-id", "metered-id", "narrow-id", "stranger-id"):
            lines.append(f'  {name}: {{type: hmac-sha256, secret: "{b64(self.secrets[name])}"}}')
        endpoints = ", ".join(f'"{e}"' for e in self.song_endpoints)
        methods = ", ".join(f'"{m}"' for m in self.chat_methods)
        accept = ", ".join(self.enc_accept)
        lines += [
            "services:",
            f"  {CALLEE}:",
            "    grpc_services: [test.v1.Echo]",
            f"    endpoints: [{endpoints}]",
            "    identity: {key: song-id}",
            f"    encrypt: {{key: {self.enc_key}, accept: [{accept}]}}",
            "    compress: {algorithm: gzip, min_bytes: 1024}",
            f"    timeout_ms: {self.timeout_ms}",
            *([f"    secret_metadata: [{', '.join(self.secret_metadata)}]"]
              if self.secret_metadata else []),
            *([f"    mode: {self.song_mode}"] if self.song_mode else []),
            "    allow:",
            *([f"      - caller: {CALLER}", f"        methods: [{methods}]"]
              if self.chat_rule else []),
            f"      - caller: {METERED}",
            '        methods: ["/test.v1.Echo/*"]',
            "        rate_limit: {rps: 10, burst: 5}",
            f"      - caller: {NARROW}",
            '        methods: ["/test.v1.Echo/Unary"]',
            *([f"        mode: {self.narrow_mode}"] if self.narrow_mode else []),
            f"  {CALLER}:",
            "    identity: {key: chat-id}",
            f"  {METERED}:",
            "    identity: {key: metered-id}",
            f"  {NARROW}:",
            "    identity: {key: narrow-id}",
            f"  {STRANGER}:",
            "    identity: {key: stranger-id}",
        ]
        return "\n".join(lines) + "\n"

    def with_(self, **changes: Any) -> DataplanePolicy:
        return replace(self, **changes)


# --- proxies as processes -------------------------------------------------------------


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class ProxyProcess:
    """A running `python -m proxy_svc`; `address` is its listen address."""

    args: tuple[str, ...]
    address: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] | None = None  # None: the test's own environment

    def start(self) -> ProxyProcess:
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "proxy_svc", *self.args], stdin=subprocess.DEVNULL,
                stdout=log_file, stderr=log_file, start_new_session=True, env=self.env)
        return self

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_status(self, wanted: int, timeout: float = START_TIMEOUT_S,
                    credentials: grpc.ChannelCredentials | None = None) -> None:
        deadline = time.monotonic() + timeout
        while health_status(self.address, credentials=credentials) != wanted:
            if not self.running():
                pytest.fail(f"proxy exited ({self.proc and self.proc.returncode}):\n"
                            f"{self.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"proxy {self.address} not in health state {wanted} within "
                            f"{timeout} s:\n{self.log()}")
            time.sleep(0.05)

    def terminate(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, then the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"proxy did not exit within {timeout} s of SIGTERM:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL to the proxy's process group (its workers too), and reap."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT_S)


def proxy_args(role: str, service: str, address: str, *, center: str | None = None,
               policy: Path | None = None, upstream: str | None = None,
               extra: Sequence[str] = ()) -> tuple[str, ...]:
    args = ["--role", role, "--service", service, "--listen", address]
    if center is not None:
        args += ["--center", center]
    if policy is not None:
        args += ["--policy", str(policy), "--policy-poll", "0.2"]
    if upstream is not None:
        args += ["--upstream", upstream]
    return (*args, *extra)


class Proxies:
    """Starts proxies, and stops every one still running at teardown (SIGTERM, exit 0)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[ProxyProcess] = []

    def start(self, role: str, service: str, address: str, *, wait: bool = True,
              env: dict[str, str] | None = None, **kwargs: Any) -> ProxyProcess:
        name = f"proxy-{len(self.started)}-{role}-{service}.log"
        proxy = ProxyProcess(proxy_args(role, service, address, **kwargs), address,
                             self.log_dir / name, env=env).start()
        self.started.append(proxy)
        if wait:
            proxy.wait_status(SERVING)
        return proxy

    def stop_all(self) -> None:
        failures = []
        for proxy in self.started:
            if proxy.running():
                code = proxy.terminate()
                if code != 0:
                    failures.append(f"{proxy.address} exited {code}:\n{proxy.log()}")
        assert not failures, "\n".join(failures)


def free_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


@dataclass
class FileStack:
    """An in-proxy of song_service and out-proxies of callers, all from one policy file."""

    policy: DataplanePolicy
    policy_path: Path
    inproxy: ProxyProcess
    outproxies: dict[str, ProxyProcess]

    def write(self, policy: DataplanePolicy) -> None:
        """Replaces the policy file atomically (the proxies reload it)."""
        tmp = self.policy_path.with_suffix(".tmp")
        tmp.write_text(policy.yaml_text())
        os.replace(tmp, self.policy_path)
        self.policy = policy


def start_file_stack(proxies: Proxies, upstream: str, directory: Path,
                     callers: Sequence[str] = (CALLER,), policy: DataplanePolicy | None = None,
                     endpoint: str | None = None, in_address: str | None = None,
                     extra: Sequence[str] = ()) -> FileStack:
    """Starts the proxies in parallel; `endpoint` (default the in-proxy) is what the policy
    lists for song_service (e.g. a recording relay in front of the in-proxy)."""
    in_address = in_address or free_address()
    policy = (policy or DataplanePolicy()).with_(song_endpoints=(endpoint or in_address,))
    path = directory / "policy.yaml"
    path.write_text(policy.yaml_text())
    inproxy = proxies.start("in", CALLEE, in_address, wait=False, policy=path,
                            upstream=upstream, extra=extra)
    outs = {name: proxies.start("out", name, free_address(), wait=False, policy=path,
                                extra=extra)
            for name in callers}
    for proxy in (inproxy, *outs.values()):
        proxy.wait_status(SERVING)
    return FileStack(policy, path, inproxy, outs)


@contextlib.contextmanager
def relayed_file_stack(upstream: str, directory: Path, callers: Sequence[str],
                       policy: DataplanePolicy | None = None, extra: Sequence[str] = ()
                       ) -> Iterator[tuple[RecordingRelay, FileStack]]:
    """A file stack whose policy lists a `RecordingRelay` as song_service's endpoint, in
    front of the real in-proxy; everything stopped on exit. `extra`: flags of every proxy."""
    in_address = free_address()
    relay = RecordingRelay(in_address).start()
    proxies = Proxies(directory)
    try:
        yield relay, start_file_stack(proxies, upstream, directory, callers=callers,
                                      policy=policy, endpoint=relay.address,
                                      in_address=in_address, extra=extra)
    finally:
        proxies.stop_all()
        relay.stop()


def start_tls_pair(proxies: Proxies, pki: Pki, upstream: str, directory: Path
                   ) -> tuple[ProxyProcess, ProxyProcess, grpc.ChannelCredentials]:
    """song_service's in-proxy and chat_service's out-proxy with certificates of their own
    (mutual TLS between them), SERVING; and the credentials of an app (`chat_app`) to call
    them. `pki` must hold certificates for CALLEE, CALLER and "chat_app"."""
    in_address, out_address = free_address(), free_address()
    path = directory / "policy.yaml"
    path.write_text(DataplanePolicy(song_endpoints=(in_address,)).yaml_text())
    inproxy = proxies.start("in", CALLEE, in_address, wait=False, policy=path,
                            upstream=upstream, extra=pki.flags(CALLEE))
    out = proxies.start("out", CALLER, out_address, wait=False, policy=path,
                        extra=pki.flags(CALLER))
    app = pki.client_credentials("chat_app")
    inproxy.wait_status(SERVING, credentials=app)
    out.wait_status(SERVING, credentials=app)
    return inproxy, out, app


# --- crafted calls: the sans-IO core in the test --------------------------------------


def out_node(yaml_text: str, caller: str = CALLER) -> NodePolicy:
    """`caller`'s out-node policy, compiled here as its out-proxy compiles it."""
    return NodePolicy.from_snapshot(scope_snapshot(load_policy(yaml_text), pb.ROLE_OUT, caller))


def open_session(node: NodePolicy, in_address: str, method: str = UNARY,
                 ch: grpc.Channel | None = None) -> CallerSession:
    """A session of `node` with the in-proxy (or embedded server) at `in_address`, opened
    here with a `Session/Open` call as the out-proxy opens it (on `ch` if given: the
    connection the calls will use)."""
    destination = node.route(method)
    handshake = node.caller.handshake(destination, time.time())
    hello = ((HELLO_KEY, handshake.request),)
    if ch is None:
        with channel(in_address) as own:
            _, rpc = own.unary_unary(OPEN_METHOD).with_call(b"", metadata=hello, timeout=5)
    else:
        _, rpc = ch.unary_unary(OPEN_METHOD).with_call(b"", metadata=hello, timeout=5)
    return handshake.finish(hello_of(rpc.trailing_metadata()), destination.verifiers,
                            time.time())


def new_call(node: NodePolicy, in_address: str, method: str = UNARY,
             metadata: Metadata = (), session: CallerSession | None = None,
             now: float | None = None) -> OutboundCall:
    """A call of `node` sealed here, in `session` (a new one with `in_address` if none);
    `now` is the time its CALL record says it was made (default: now)."""
    if session is None:
        session = open_session(node, in_address, method)
    return node.outbound(node.route(method), session, method, tuple(metadata),
                         time.time() if now is None else now)


def made_up_session(node: NodePolicy, method: str = UNARY) -> CallerSession:
    """A session no callee ever opened: a random id and random keys, made by `node` without
    any handshake (what an attacker can make up)."""
    destination = node.route(method)
    assert node.caller.signer is not None
    return CallerSession(
        session_id=os.urandom(SESSION_ID_BYTES), callee=destination.name,
        secrets=SessionSecrets(os.urandom(32), os.urandom(32), os.urandom(32)),
        suite=destination.suite, psk_id=destination.psk_id,
        signer_id=node.caller.signer.key_id, lifetime_s=600, max_calls=1 << 32,
        opened_at=time.time())


def reply_of(call: OutboundCall, reply: bytes, rpc: Any) -> bytes:
    """The opened reply of a unary crafted call, its head and end checked as the out-proxy
    checks them (`rpc` is grpc's call object of `with_call`)."""
    call.open_head(tuple(rpc.initial_metadata() or ()))
    opened = call.open_response(reply)
    call.open_end(rpc.code().value[0], rpc.details() or "", tuple(rpc.trailing_metadata() or ()))
    return opened


# --- calls ----------------------------------------------------------------------------


def channel(address: str, credentials: grpc.ChannelCredentials | None = None) -> grpc.Channel:
    if credentials is not None:
        return grpc.secure_channel(address, credentials, options=CLIENT_OPTIONS)
    return grpc.insecure_channel(address, options=CLIENT_OPTIONS)


def call_kind(ch: grpc.Channel, kind: str, payload: bytes, metadata: Metadata = (),
              timeout: float | None = 10.0) -> tuple[list[bytes], Any]:
    """One call of `kind` sending `payload` (twice in client and bidi streams); returns the
    responses and the call (for metadata and status)."""
    if kind == "unary":
        response, call = ch.unary_unary(UNARY).with_call(payload, metadata=metadata,
                                                         timeout=timeout)
        return [response], call
    if kind == "client_stream":
        response, call = ch.stream_unary(CLIENT_STREAM).with_call(
            iter([payload, payload]), metadata=metadata, timeout=timeout)
        return [response], call
    if kind == "server_stream":
        stream = ch.unary_stream(SERVER_STREAM)(payload, metadata=metadata, timeout=timeout)
    else:
        stream = ch.stream_stream(BIDI)(iter([payload, payload]), metadata=metadata,
                                        timeout=timeout)
    return list(stream), stream


def unary(address: str, payload: bytes = b"ping", metadata: Metadata = (),
          timeout: float = 5.0) -> bytes:
    with channel(address) as ch:
        reply: bytes = ch.unary_unary(UNARY)(payload, metadata=metadata, timeout=timeout)
        return reply


def reason_of(error: grpc.RpcError) -> str | None:
    """The `fastproxy-error` trailer of a refused call (None: not one of ours)."""
    value = dict(error.trailing_metadata() or ()).get("fastproxy-error")
    return str(value) if value is not None else None


def refusal(address: str, payload: bytes = b"ping", metadata: Metadata = (),
            timeout: float = 5.0) -> grpc.RpcError:
    """The error of a unary call that must fail."""
    with pytest.raises(grpc.RpcError) as raised:
        unary(address, payload, metadata, timeout)
    return raised.value


def poll(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> float:
    """Polls until `predicate()` is truthy; returns the seconds it took."""
    start = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - start
        except grpc.RpcError:
            pass
        if time.monotonic() - start > timeout:
            pytest.fail(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


def refused_with(address: str, reason: str) -> bool:
    try:
        unary(address)
    except grpc.RpcError as err:
        return reason_of(err) == reason
    return False


def succeeds(address: str) -> bool:
    try:
        return unary(address, b"ok?") == b"ok?"
    except grpc.RpcError:
        return False


# --- the recording in-proxy stand-in --------------------------------------------------


@dataclass
class RelayedCall:
    method: str
    metadata: list[tuple[str, str | bytes]]
    requests: list[bytes] = field(default_factory=list)
    responses: list[bytes] = field(default_factory=list)
    trailers: list[tuple[str, str | bytes]] = field(default_factory=list)
    initial: list[tuple[str, str | bytes]] = field(default_factory=list)  # response headers


def flipped(message: bytes) -> bytes:
    """`message` with its last byte changed (the empty message unchanged)."""
    if not message:
        return message
    return message[:-1] + bytes([message[-1] ^ 0x01])


def _relayable(metadata: Any) -> tuple[tuple[str, str | bytes], ...]:
    return tuple((key, value) for key, value in metadata or ()
                 if not key.startswith(":") and key not in ("content-type", "grpc-status",
                                                            "grpc-message"))


class RecordingRelay(LoopbackRelay):
    """A grpc.aio server on its own loop in a thread: records every call's raw messages and
    metadata, and relays it to `target` (the real in-proxy), initial metadata and trailers
    included."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.calls: list[RelayedCall] = []
        # a man in the middle: flip the last byte of every request / response message
        self.flip_requests = False
        self.flip_responses = False

    async def _relay(self, method: str, requests: AsyncIterator[bytes],
                     context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        metadata = [(m.key, m.value) for m in context.invocation_metadata() or ()]
        record = RelayedCall(method, metadata)
        self.calls.append(record)
        forwarded = tuple((k, v) for k, v in metadata
                          if k not in ("user-agent", "content-type", "te")
                          and not k.startswith(":"))

        async def recorded() -> AsyncIterator[bytes]:
            async for message in requests:
                record.requests.append(message)
                yield flipped(message) if self.flip_requests else message

        call = self._channel.stream_stream(method)(recorded(), metadata=forwarded,
                                                    timeout=context.time_remaining())
        # the relay is a grpc.aio client too: keep the in-proxy's real status (grpc#36066)
        statuses = StatusLog(call)
        try:
            record.initial = list(await call.initial_metadata() or ())
            initial = _relayable(record.initial)
            if initial:
                await context.send_initial_metadata(initial)
            async for reply in call:
                record.responses.append(reply)
                yield flipped(reply) if self.flip_responses else reply
            record.trailers = list(await call.trailing_metadata() or ())
            context.set_trailing_metadata(_relayable(record.trailers))
        except grpc.aio.AioRpcError as failed:
            err = await statuses.settled(failed)
            record.initial = record.initial or list(err.initial_metadata() or ())
            record.trailers = list(err.trailing_metadata() or ())
            if err.code() == grpc.StatusCode.OK:
                # the in-proxy ended OK while a request of ours was still being written
                context.set_trailing_metadata(_relayable(record.trailers))
                return
            await context.abort(err.code(), err.details() or "", tuple(record.trailers))

    def forwarded_metadata(self, method: str) -> list[dict[str, str]]:
        """The text metadata of every `method` call the relay passed so far, whether on a
        stream of its own or carried in a tunnel (`Tunnel/Carry` frames)."""
        found = [{key: value for key, value in call.metadata if isinstance(value, str)}
                 for call in list(self.calls) if call.method == method]
        for call in list(self.calls):
            if call.method != CARRY_METHOD:
                continue
            for message in list(call.requests):
                for frame in tunnel_pb2.TunnelFrames.FromString(message).frames:
                    if frame.HasField("call") and frame.call.method == method:
                        found.append({entry.key: entry.value.decode()
                                      for entry in frame.call.metadata
                                      if not entry.key.endswith("-bin")})
        return found


# --- the Center's admin side ----------------------------------------------------------


class CenterAdmin:
    """Applies policies through a Center's admin RPCs and waits for nodes' ACKs."""

    def __init__(self, address: str, metadata: Metadata = ()) -> None:
        self.address = address
        self.metadata = tuple(metadata)  # the admin's credential, if the Center wants one

    def _stub(self, ch: grpc.Channel) -> center_pb2_grpc.CenterStub:
        return center_pb2_grpc.CenterStub(ch)

    def apply(self, policy: DataplanePolicy, comment: str = "") -> int:
        with grpc.insecure_channel(self.address) as ch:
            reply = self._stub(ch).ApplyPolicy(
                center_pb2.ApplyPolicyRequest(yaml=policy.yaml_text(), comment=comment),
                timeout=10, metadata=self.metadata)
        assert not reply.errors, list(reply.errors)
        revision: int = reply.revision.revision
        return revision

    def nodes(self) -> center_pb2.ListNodesResponse:
        with grpc.insecure_channel(self.address) as ch:
            reply: center_pb2.ListNodesResponse = self._stub(ch).ListNodes(
                center_pb2.ListNodesRequest(), timeout=5, metadata=self.metadata)
            return reply

    def acked(self, node_ids: Sequence[str], revision: int) -> bool:
        acked = {n.node_id: n.acked_revision for n in self.nodes().nodes}
        return all(acked.get(node_id, 0) >= revision for node_id in node_ids)

    def wait_acked(self, node_ids: Sequence[str], revision: int, timeout: float = 5.0) -> float:
        return poll(lambda: self.acked(node_ids, revision), timeout,
                    f"nodes {list(node_ids)} to ACK revision {revision}")


def random_payload(size: int, seed: int = 0) -> bytes:
    import random
    return random.Random(seed).randbytes(size)


def stream_requests(payloads: Sequence[bytes]) -> Iterator[bytes]:
    yield from payloads


# --- TLS material ---------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A test CA and, per name, `cert` and `key` PEM files signed by it (CN = the name,
    SANs: the name and 127.0.0.1)."""

    ca: Path
    files: dict[str, tuple[Path, Path]]

    def cert(self, name: str) -> Path:
        return self.files[name][0]

    def key(self, name: str) -> Path:
        return self.files[name][1]

    def flags(self, name: str) -> tuple[str, ...]:
        return ("--tls-cert", str(self.cert(name)), "--tls-key", str(self.key(name)),
                "--tls-ca", str(self.ca))

    def client_credentials(self, name: str | None) -> grpc.ChannelCredentials:
        """TLS trusting the CA; with the certificate of `name`, or none."""
        if name is None:
            return grpc.ssl_channel_credentials(root_certificates=self.ca.read_bytes())
        return grpc.ssl_channel_credentials(root_certificates=self.ca.read_bytes(),
                                            private_key=self.key(name).read_bytes(),
                                            certificate_chain=self.cert(name).read_bytes())


def make_pki(directory: Path, names: Sequence[str]) -> Pki:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))

    def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fastproxy test CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(valid[0]).not_valid_after(valid[1])
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .sign(ca_key, hashes.SHA256()))
    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files: dict[str, tuple[Path, Path]] = {}
    for name in names:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(ca_name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(valid[0]).not_valid_after(valid[1])
                .add_extension(x509.SubjectAlternativeName([
                    x509.DNSName(name.replace("_", "-")),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(pem_key(key))
        files[name] = (cert_path, key_path)
    return Pki(ca_path, files)
