"""The Center's TLS listener when it takes client certificates (`--client-ca`): one listener
where a node or an operator proves who it is with a bearer token or with a client
certificate, whichever it carries.

gRPC's Python API can only *require* a client certificate or *not ask* for one
(`grpc.ssl_server_credentials(require_client_auth=...)`; the C core's "request, don't
require" mode is not exposed). Requiring one shut every token out with nothing but a TLS
alert; not asking would lose certificates. So here TLS ends in this listener, with Python's
`ssl` (`CERT_OPTIONAL`: a certificate is asked for, verified against `--client-ca` when one
comes, and not required), and each connection's bytes are passed on to the Center's gRPC
server, which listens on a loopback port of its own. The listener remembers, by the address
the gRPC server sees a passed connection come from, who is at the other end: the peer's
address and the subject of its certificate, if any (`PassedConnections`).

A certificate that does not verify ends the handshake (logged here with the peer and the
reason; the client's own error names the TLS alert, which `fastproxy.node.credentials`
turns into one line). Calls that reach the gRPC server's port other than through this
listener are refused (`Authenticator`), so that port lends nobody a certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from dataclasses import dataclass

log = logging.getLogger("center_svc.tls")

HANDSHAKE_TIMEOUT_S = 10.0
CHUNK_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """What the Center reads of a verified client certificate."""

    common_name: str
    uris: tuple[str, ...]  # URI subject alternative names


@dataclass(frozen=True, slots=True)
class PassedConnection:
    peer: str  # the client's address, written as gRPC writes peers (ipv4:ADDR:PORT)
    certificate: ClientCertificate | None


class PassedConnections:
    """The connections the TLS listener passes on, by the peer string the gRPC server sees
    for each (`ipv4:127.0.0.1:PORT`, the listener's own end of the loopback connection)."""

    def __init__(self) -> None:
        self._by_inner_peer: dict[str, PassedConnection] = {}

    def add(self, inner_peer: str, connection: PassedConnection) -> None:
        self._by_inner_peer[inner_peer] = connection

    def remove(self, inner_peer: str) -> None:
        self._by_inner_peer.pop(inner_peer, None)

    def get(self, inner_peer: str) -> PassedConnection | None:
        return self._by_inner_peer.get(inner_peer)

    def __len__(self) -> int:
        return len(self._by_inner_peer)


def server_context(cert_file: str, key_file: str, client_ca_pem: bytes) -> ssl.SSLContext:
    """TLS 1.2 or later, HTTP/2 by ALPN (gRPC clients insist on it), a client certificate
    asked for and checked against `client_ca_pem`, not required. Raises ssl.SSLError or
    OSError when the certificate and key do not load."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    context.load_verify_locations(cadata=client_ca_pem.decode("ascii", "replace"))
    context.verify_mode = ssl.CERT_OPTIONAL
    context.set_alpn_protocols(["h2"])
    return context


def grpc_peer(address: tuple[object, ...] | None) -> str:
    """A socket address written as gRPC writes peers: `ipv4:1.2.3.4:5` or `ipv6:[::1]:5`."""
    if not address:
        return "unknown"
    host, port = str(address[0]), address[1]
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


def certificate_of(peercert: dict[str, object] | None) -> ClientCertificate | None:
    """The subject's common name and URI names of a certificate `ssl` verified (the dict of
    `SSLSocket.getpeercert()`), or None when the client sent none."""
    if not peercert:
        return None
    common_name = ""
    for rdn in peercert.get("subject", ()):  # type: ignore[attr-defined]
        for key, value in rdn:
            if key == "commonName" and not common_name:
                common_name = str(value)
    uris = tuple(str(value) for kind, value in peercert.get("subjectAltName", ())  # type: ignore[attr-defined]
                 if kind == "URI")
    return ClientCertificate(common_name, uris)


def handshake_failure(exc: BaseException) -> str:
    """Why a TLS handshake failed, in a few words (for the log)."""
    if isinstance(exc, TimeoutError):
        return f"no TLS handshake within {HANDSHAKE_TIMEOUT_S:g} s"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"client certificate refused: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        if reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL"):
            return f"not TLS ({reason}): a plaintext client?"
        return reason
    return str(exc) or type(exc).__name__


class TlsListener:
    """Listens on `listen` with `context` and passes each connection, once its handshake
    is done, to the gRPC server at 127.0.0.1:`inner_port`."""

    def __init__(self, listen: str, context: ssl.SSLContext, inner_port: int,
                 passed: PassedConnections) -> None:
        self.listen = listen
        self.context = context
        self.inner_port = inner_port
        self.passed = passed
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Binds and starts accepting; returns the bound port. Raises OSError."""
        host, _, port = self.listen.rpartition(":")
        self._server = await asyncio.start_server(self._accepted, host.strip("[]"), int(port),
                                                  reuse_address=True)
        sockets = self._server.sockets
        return int(sockets[0].getsockname()[1]) if sockets else 0

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        """Stops accepting and ends every passed connection still open."""
        self.stop_accepting()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _accepted(self, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._pass(reader, writer)
        finally:
            self._connections.discard(task)

    async def _pass(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = grpc_peer(writer.get_extra_info("peername"))
        tls = TlsStream(self.context, reader, writer)
        try:
            await asyncio.wait_for(tls.handshake(), HANDSHAKE_TIMEOUT_S)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            log.warning("TLS handshake from %s failed: %s", peer, handshake_failure(exc))
            await tls.close_after_refusal()
            return
        connection = PassedConnection(peer, certificate_of(tls.peer_certificate()))
        try:
            inner_reader, inner_writer = await asyncio.open_connection("127.0.0.1",
                                                                       self.inner_port)
        except OSError as exc:
            log.error("cannot pass %s to the Center's gRPC server: %s", peer, exc)
            _abort(writer)
            return
        inner_peer = grpc_peer(inner_writer.get_extra_info("sockname"))
        # known before the first byte reaches the gRPC server, forgotten before the port is
        # free for another connection
        self.passed.add(inner_peer, connection)
        try:
            await _relay(tls, inner_reader, inner_writer)
        finally:
            self.passed.remove(inner_peer)
            _abort(inner_writer)
            _abort(writer)


class TlsStream:
    """TLS over a stream, run by hand on memory buffers (`ssl.SSLObject`), so that the
    alert of a refused handshake reaches the client before the connection closes (asyncio's
    own TLS transport drops it), and the client's error says TLS refused it rather than
    that the socket closed."""

    def __init__(self, context: ssl.SSLContext, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._reader, self._writer = reader, writer

    def peer_certificate(self) -> dict[str, object] | None:
        found: dict[str, object] | None = self._tls.getpeercert()  # type: ignore[assignment]
        return found

    async def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            self._writer.write(data)
            await self._writer.drain()

    async def _fill(self) -> bool:
        """Reads more of the client's bytes into the TLS buffer; False at its end."""
        data = await self._reader.read(CHUNK_BYTES)
        if not data:
            self._incoming.write_eof()
            return False
        self._incoming.write(data)
        return True

    async def handshake(self) -> None:
        """Raises ssl.SSLError (its alert sent) or OSError."""
        while True:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill():
                    raise ConnectionResetError("the client closed the connection during "
                                               "the TLS handshake") from None
                continue
            except ssl.SSLError:
                await self._flush()  # the alert
                raise
            await self._flush()
            return

    async def read(self) -> bytes:
        """The client's next bytes; b"" once it is done."""
        while True:
            try:
                data = self._tls.read(CHUNK_BYTES)
            except ssl.SSLWantReadError:
                await self._flush()  # what reading produced (e.g. a key update's answer)
                if not await self._fill():
                    return b""
                continue
            except ssl.SSLZeroReturnError:
                return b""
            await self._flush()
            return data

    async def write(self, data: bytes) -> None:
        self._tls.write(data)
        await self._flush()

    async def close_after_refusal(self, linger_s: float = 2.0) -> None:
        """Closes after a refused handshake without discarding what the client still sends:
        closing with unread bytes would reset the connection, and the reset can overtake
        the alert on its way to the client."""
        with contextlib.suppress(Exception):
            if self._writer.can_write_eof():
                self._writer.write_eof()
            deadline = asyncio.get_running_loop().time() + linger_s
            while (left := deadline - asyncio.get_running_loop().time()) > 0:
                if not await asyncio.wait_for(self._reader.read(CHUNK_BYTES), left):
                    break
        _abort(self._writer)


async def _relay(tls: TlsStream, inner_reader: asyncio.StreamReader,
                 inner_writer: asyncio.StreamWriter) -> None:
    """Copies both ways until either side ends (HTTP/2 has no use for half a connection)."""
    async def inwards() -> None:
        while data := await tls.read():
            inner_writer.write(data)
            await inner_writer.drain()

    async def outwards() -> None:
        while data := await inner_reader.read(CHUNK_BYTES):
            await tls.write(data)

    directions = [asyncio.create_task(inwards()), asyncio.create_task(outwards())]
    try:
        await asyncio.wait(directions, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for direction in directions:
            direction.cancel()
        for direction in directions:
            with contextlib.suppress(asyncio.CancelledError, OSError, ssl.SSLError):
                await direction


def _abort(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()
