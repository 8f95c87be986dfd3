"""The embedded server takes the Center's settings as the client side does: the same keyword
arguments (`token`, `tls_ca`/`tls_cert`/`tls_key` as paths, `center_public_key`, ...) and the
same `FASTPROXY_*` variables, sync and aio alike; the older `credentials=CenterCredentials`
and `pinned_key=` keep working. Against a real Center with TLS and node tokens."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import CenterProcess, launch_center
from support.dataplane import make_pki
from support.sdk_stack import CALLEE, CALLER, sdk_policy_yaml

import fastproxy
import server_svc
from fastproxy.node.credentials import CenterCredentials
from fastproxy.sdk import SdkConfigError
from fastproxy.v1 import center_pb2, center_pb2_grpc

pytestmark = pytest.mark.timeout(60)

SONG_TOKEN = "song-node-token"
CHAT_TOKEN = "chat-node-token"
LOAD_S = 10.0


@dataclass
class Center:
    address: str
    ca: Path
    public_key: str  # base64, as `fastproxy center key` prints it


@pytest.fixture(scope="module")
def center(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Center]:
    directory = tmp_path_factory.mktemp("embedded-settings")
    pki = make_pki(directory, ["center"])
    tokens = directory / "node-tokens"
    tokens.write_text(f"{CALLEE}: {SONG_TOKEN}\n{CALLER}: {CHAT_TOKEN}\n")
    policy = directory / "policy.yaml"
    policy.write_text(sdk_policy_yaml("127.0.0.1:9"))
    tls = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    process: CenterProcess = launch_center(
        ("--tls-cert", str(pki.cert("center")), "--tls-key", str(pki.key("center")),
         "--node-tokens", str(tokens), "--policy", str(policy)),
        directory / "center.log", credentials=tls)
    try:
        with grpc.secure_channel(process.address, tls) as channel:
            info = center_pb2_grpc.CenterStub(channel).GetCenterInfo(
                center_pb2.GetCenterInfoRequest(), timeout=5)
        yield Center(process.address, pki.ca, base64.b64encode(info.public_key).decode())
    finally:
        assert process.terminate() == 0, process.log()


MakeServer = Callable[..., list[Any]]
TWINS = [pytest.param(server_svc.server_interceptors, id="sync"),
         pytest.param(server_svc.aio_server_interceptors, id="aio")]


def loaded(interceptors: list[Any]) -> bool:
    policy = interceptors[0].policy
    try:
        return bool(policy.wait_loaded(LOAD_S))
    finally:
        policy.stop()


@pytest.mark.parametrize("make", TWINS)
def test_the_server_takes_the_client_sides_keyword_arguments(center: Center,
                                                             make: MakeServer) -> None:
    settings = {"center": center.address, "tls_ca": str(center.ca),
                "center_public_key": center.public_key}
    assert loaded(make(service=CALLEE, token=SONG_TOKEN, **settings))
    with fastproxy.client_interceptors(service=CALLER, embedded=True, token=CHAT_TOKEN,
                                       **settings) as client:
        assert client.wait_for_policy(LOAD_S)


@pytest.mark.parametrize("make", TWINS)
def test_the_server_reads_the_client_sides_variables(center: Center, make: MakeServer,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """One app that serves and calls, configured once by its environment."""
    for name, value in (("SERVICE", CALLEE), ("CENTER", center.address),
                        ("TOKEN", SONG_TOKEN), ("TLS_CA", str(center.ca)),
                        ("CENTER_PUBLIC_KEY", center.public_key)):
        monkeypatch.setenv(f"FASTPROXY_{name}", value)
    assert loaded(make())
    with fastproxy.client_interceptors(embedded=True) as client:
        assert client.config.service == CALLEE
        assert client.wait_for_policy(LOAD_S)


@pytest.mark.parametrize("make", TWINS)
def test_the_older_credentials_argument_keeps_working(center: Center,
                                                      make: MakeServer) -> None:
    key = base64.b64decode(center.public_key)
    by_bytes = CenterCredentials(token=SONG_TOKEN, tls_ca=center.ca.read_bytes())
    by_files = CenterCredentials.from_files(token=SONG_TOKEN, tls_ca=str(center.ca))
    for credentials in (by_bytes, by_files):
        assert loaded(make(service=CALLEE, center=center.address, credentials=credentials,
                           pinned_key=key))


@pytest.mark.parametrize("make", TWINS)
def test_a_refused_token_fails_the_wait_at_once(center: Center, make: MakeServer) -> None:
    interceptors = make(service=CALLEE, center=center.address, token="not-a-token",
                        tls_ca=str(center.ca))
    policy = interceptors[0].policy
    try:
        assert policy.wait_loaded(LOAD_S) is False
    finally:
        policy.stop()


@pytest.mark.parametrize(("arguments", "says"), [
    ({"center": "127.0.0.1:1", "credentials": CenterCredentials(token="t"), "token": "t"},
     "give either credentials= or token=, not both"),
    ({"center": "127.0.0.1:1", "pinned_key": bytes(32), "center_public_key": "x"},
     "give either pinned_key= or center_public_key=, not both"),
    ({"service": None, "center": "127.0.0.1:1"}, "service is required"),
    ({}, "give a center"),
    ({"center": "127.0.0.1:1", "policy_file": "p.yaml"}, "exclude each other"),
    ({"center": "center.example:7070"}, "refusing plaintext to the Center"),
    ({"center": "127.0.0.1:1", "center_public_key": "not a key"}, "center_public_key"),
])
@pytest.mark.parametrize("make", TWINS)
def test_bad_settings_name_the_argument(make: MakeServer, arguments: dict[str, Any],
                                        says: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SERVICE", "CENTER", "POLICY_FILE", "TOKEN", "TLS_CA", "CENTER_PUBLIC_KEY"):
        monkeypatch.delenv(f"FASTPROXY_{name}", raising=False)
    with pytest.raises(SdkConfigError, match=says):
        make(**{"service": CALLEE, "start": False, **arguments})
