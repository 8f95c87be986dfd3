"""Real etcd for the tests: members on loopback, random free ports, a temporary data folder.

`EtcdCluster(directory, size).start()` runs `etcd` (Debian's etcd-server, /usr/bin/etcd) as
`size` members of one cluster and waits until it has a quorum; `url(prefix)` is the
`--store` URL naming every member. `kill(i)` (SIGKILL), `start_member(i)` (again, on the same
data folder and ports), `pause(i)`/`resume(i)` (SIGSTOP/SIGCONT: a member that hangs, as a
partitioned one does) act on one member; `stop()` kills them all. A test module shares one
cluster and gives each test its own key prefix (`unique_prefix`).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from fastproxy.etcd import rpc_pb2 as etcd
from fastproxy.etcd import rpc_pb2_grpc as etcd_grpc

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
START_TIMEOUT_S = 20.0


def etcd_available() -> bool:
    return Path(ETCD).is_file()


needs_etcd = pytest.mark.skipif(not etcd_available(),
                                reason="etcd is not installed (apt-get install etcd-server)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique_prefix(name: str = "t") -> str:
    return f"{name}-{uuid.uuid4().hex[:12]}"


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass(frozen=True)
class EtcdTls:
    """TLS for the members' client port: their certificate and key, and the CA that signs
    them (and, with `client_certificates`, the clients' certificates etcd demands)."""

    cert: Path
    key: Path
    ca: Path
    client_certificates: bool = False


class EtcdCluster:
    def __init__(self, directory: Path, size: int = 1, tls: EtcdTls | None = None) -> None:
        self.directory = directory
        self.tls = tls
        self.scheme = "https" if tls else "http"
        self.members = [
            Member(f"m{i}", _free_port(), _free_port(), directory / f"m{i}.etcd",
                   directory / f"m{i}.log")
            for i in range(size)]
        self._cluster = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}"
                                 for m in self.members)

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def url(self, prefix: str, members: list[int] | None = None) -> str:
        """The Center's --store URL (etcd:// whatever the members speak: TLS is a flag)."""
        chosen = self.members if members is None else [self.members[i] for i in members]
        return "etcd://" + ",".join(m.endpoint for m in chosen) + "/" + prefix

    def start(self) -> EtcdCluster:
        for index in range(len(self.members)):
            self.start_member(index, wait=False)
        self.wait_quorum()
        return self

    def start_member(self, index: int, *, wait: bool = True) -> None:
        member = self.members[index]
        state = "existing" if member.data_dir.exists() else "new"
        tls: list[str] = []
        if self.tls is not None:
            tls = ["--cert-file", str(self.tls.cert), "--key-file", str(self.tls.key),
                   "--trusted-ca-file", str(self.tls.ca)]
            if self.tls.client_certificates:
                tls.append("--client-cert-auth")
        with member.log_path.open("ab") as log:
            member.proc = subprocess.Popen(
                [ETCD, "--name", member.name, "--data-dir", str(member.data_dir),
                 "--listen-client-urls", f"{self.scheme}://{member.endpoint}",
                 "--advertise-client-urls", f"{self.scheme}://{member.endpoint}", *tls,
                 "--listen-peer-urls", f"http://127.0.0.1:{member.peer_port}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{member.peer_port}",
                 "--initial-cluster", self._cluster, "--initial-cluster-state", state,
                 "--initial-cluster-token", f"fastproxy-test-{id(self)}",
                 # a short election, so a lost leader is replaced within a second
                 "--heartbeat-interval", "50", "--election-timeout", "500",
                 "--logger", "zap", "--log-level", "warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        if wait:
            self.wait_serving(index)

    def wait_serving(self, index: int, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        member = self.members[index]
        while not self._answers(member):
            if not member.running:
                pytest.fail(f"etcd {member.name} exited:\n{self.log(index)}")
            if time.monotonic() > deadline:
                pytest.fail(f"etcd {member.name} not serving within {timeout} s:\n"
                            f"{self.log(index)}")
            time.sleep(0.1)

    def wait_quorum(self, timeout: float = START_TIMEOUT_S) -> None:
        for index, member in enumerate(self.members):
            if member.running:
                self.wait_serving(index, timeout)

    def _answers(self, member: Member) -> bool:
        """A linearizable read through this member succeeds (the cluster has a leader; with
        authentication on, a refusal for want of a token says the same)."""
        with self.client_channel(self.members.index(member)) as channel:
            try:
                etcd_grpc.KVStub(channel).Range(etcd.RangeRequest(key=b"\x00"), timeout=1.0)
            except grpc.RpcError as exc:
                return exc.code() in (grpc.StatusCode.INVALID_ARGUMENT,  # type: ignore[attr-defined]
                                      grpc.StatusCode.PERMISSION_DENIED,
                                      grpc.StatusCode.UNAUTHENTICATED)
        return True

    def log(self, index: int) -> str:
        return self.members[index].log_path.read_text(errors="replace")

    def kill(self, index: int) -> None:
        member = self.members[index]
        if member.proc is not None and member.proc.poll() is None:
            member.proc.send_signal(signal.SIGCONT)  # a paused member must die too
            member.proc.kill()
            member.proc.wait(timeout=10)

    def pause(self, index: int) -> None:
        proc = self.members[index].proc
        assert proc is not None
        proc.send_signal(signal.SIGSTOP)

    def resume(self, index: int) -> None:
        proc = self.members[index].proc
        assert proc is not None
        proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        for index in range(len(self.members)):
            self.kill(index)

    def client_channel(self, index: int = 0, client: tuple[Path, Path] | None = None
                       ) -> grpc.Channel:
        """A channel to a member (TLS when the cluster has it; `client`: certificate and
        key to present)."""
        endpoint = self.members[index].endpoint
        if self.tls is None:
            return grpc.insecure_channel(endpoint)
        cert, key = client or (self.tls.cert, self.tls.key)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.tls.ca.read_bytes(), private_key=key.read_bytes(),
            certificate_chain=cert.read_bytes())
        return grpc.secure_channel(endpoint, credentials)

    def enable_auth(self, root_password: str) -> None:
        """Turns etcd's authentication on with one user, root."""
        with self.client_channel() as channel:
            auth = etcd_grpc.AuthStub(channel)
            auth.UserAdd(etcd.AuthUserAddRequest(name="root", password=root_password),
                         timeout=5)
            auth.UserGrantRole(etcd.AuthUserGrantRoleRequest(user="root", role="root"),
                               timeout=5)
            auth.AuthEnable(etcd.AuthEnableRequest(), timeout=5)
