"""How a node, the SDK or the CLI proves who it is to the Center, and the channel that does it.

Off loopback a node or the CLI only talks TLS to the Center (its token, and the secrets a
node receives, never travel in the clear), and a node pins the Center's key
(`check_center_connection`). An address is on loopback when its host is a loopback IP
literal (`127.0.0.0/8`, `::1`) or `localhost`; any other name counts as off loopback, since
what it resolves to may change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import grpc

from fastproxy.hosting.commandline import is_loopback


class CredentialError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ConnectionFlags:
    """How the host names the settings `check_center_connection` asks for (flags for the
    commands, keyword arguments for the SDK)."""

    tls: str = "--tls-ca FILE"
    pin: str = "--center-public-key FILE"


def off_loopback(center: str) -> list[str]:
    """The addresses of `center` (one, or several comma-separated) not on loopback."""
    return [part.strip() for part in center.split(",")
            if part.strip() and not is_loopback(part.strip())]


def check_center_connection(center: str, *, uses_tls: bool, pinned_key: bytes | None,
                            node: bool = True, names: ConnectionFlags = ConnectionFlags()
                            ) -> None:
    """Raises CredentialError (one line, naming the setting to add) when a connection to a
    Center off loopback would be plaintext, or, for a node (`node`), would take snapshots
    without a pinned Center key (any self-signed snapshot would then verify)."""
    remote = off_loopback(center)
    if not remote:
        return
    where = f"the Center at {remote[0]} is not on loopback"
    if not uses_tls:
        raise CredentialError(f"refusing plaintext to the Center: {where}, and the "
                              f"credential{' and the secrets' if node else ''} would travel "
                              f"in the clear; use TLS ({names.tls})")
    if node and pinned_key is None:
        raise CredentialError(f"{where}: pin its snapshot-signing key with {names.pin} "
                              "(`fastproxy center key` prints it)")


@dataclass(frozen=True, slots=True)
class Unreachable:
    """Why a connection to the Center failed, in words an operator can act on.
    `refused`: the Center refused this client's credential (as against a fault of the
    network, or of this client's own TLS settings)."""

    reason: str
    refused: bool = False


def why_unreachable(details: str, *, uses_tls: bool, has_certificate: bool
                    ) -> Unreachable | None:
    """Reads gRPC's details of an UNAVAILABLE connection to the Center (None when they
    say nothing more than that it could not be reached).

    A Center that takes client certificates refuses one that does not verify with a TLS
    alert once the handshake is done (TLS 1.3 has the client finish first), which gRPC
    reports as `Unwrap failed (TSI_DATA_CORRUPTED)` (grpcio 1.85) or `Secure read failed`
    (grpcio 1.78); the Center's log names the reason."""
    if uses_tls and has_certificate and any(words in details for words in (
            "TSI_DATA_CORRUPTED", "Unwrap failed", "Secure read failed")):
        return Unreachable("the Center refused this client certificate in the TLS "
                           "handshake: is it signed by the Center's --client-ca, still "
                           "valid, and made for client use? (the Center's log says which)",
                           refused=True)
    if "CERTIFICATE_VERIFY_FAILED" in details:
        return Unreachable("this client does not trust the Center's certificate: is the CA "
                           "given for the Center the one that signed it, and does it name "
                           "the address dialled (else give the server name)?")
    if uses_tls and "WRONG_VERSION_NUMBER" in details:
        return Unreachable("the Center does not speak TLS on this address")
    if not uses_tls and "Socket closed" in details:
        return Unreachable("the Center closed the connection: it may expect TLS (give the "
                           "CA that signed its certificate)")
    return None


@dataclass(frozen=True, slots=True)
class CenterCredentials:
    """A bearer token and/or TLS material; none of them means plaintext (development mode)."""

    token: str = field(default="", repr=False)
    tls_ca: bytes | None = field(default=None, repr=False)
    tls_cert: bytes | None = field(default=None, repr=False)
    tls_key: bytes | None = field(default=None, repr=False)
    tls_server_name: str = ""

    @classmethod
    def from_files(cls, *, token: str = "", tls_ca: str | None = None,
                   tls_cert: str | None = None, tls_key: str | None = None,
                   tls_server_name: str = "",
                   flags: tuple[str, str, str] = ("--tls-ca", "--tls-cert", "--tls-key")
                   ) -> CenterCredentials:
        """`flags` name the CA, certificate and key in errors."""
        ca_flag, cert_flag, key_flag = flags
        if bool(tls_cert) != bool(tls_key):
            raise CredentialError(f"{cert_flag} and {key_flag} go together")
        return cls(token=token, tls_ca=_read(tls_ca, ca_flag),
                   tls_cert=_read(tls_cert, cert_flag), tls_key=_read(tls_key, key_flag),
                   tls_server_name=tls_server_name)

    @property
    def uses_tls(self) -> bool:
        return bool(self.tls_ca or self.tls_cert or self.tls_server_name)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def _options(self) -> list[tuple[str, str]]:
        if self.tls_server_name:
            return [("grpc.ssl_target_name_override", self.tls_server_name)]
        return []

    def _ssl(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.tls_ca,
                                            private_key=self.tls_key,
                                            certificate_chain=self.tls_cert)

    def aio_channel(self, address: str) -> grpc.aio.Channel:
        if self.uses_tls:
            return grpc.aio.secure_channel(address, self._ssl(), options=self._options())
        return grpc.aio.insecure_channel(address)

    def channel(self, address: str) -> grpc.Channel:
        if self.uses_tls:
            return grpc.secure_channel(address, self._ssl(), options=self._options())
        return grpc.insecure_channel(address)


def _read(path: str | None, option: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CredentialError(f"{option} {path}: cannot be read ({exc.strerror})") from None
