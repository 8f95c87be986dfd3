"""How a node, the SDK or the CLI proves who it is to the Center, and the channel that does it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import grpc


class CredentialError(ValueError):
    pass


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
                   tls_server_name: str = "") -> CenterCredentials:
        if bool(tls_cert) != bool(tls_key):
            raise CredentialError("--tls-cert and --tls-key go together")
        return cls(token=token, tls_ca=_read(tls_ca, "--tls-ca"),
                   tls_cert=_read(tls_cert, "--tls-cert"), tls_key=_read(tls_key, "--tls-key"),
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
