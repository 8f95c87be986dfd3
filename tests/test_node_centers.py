"""A node given several Centers: how `--center` is read and which replicas it dials."""

from __future__ import annotations

import socket
import subprocess
import sys
from typing import Any

import pytest

from fastproxy.node.watch import CenterTarget, resolve_centers, split_centers


def test_comma_separated_centers_are_each_a_replica() -> None:
    assert split_centers("a:7070, b:7070,") == ["a:7070", "b:7070"]
    assert resolve_centers(["127.0.0.1:7070", "[::1]:7071"]) == [
        CenterTarget("127.0.0.1:7070"), CenterTarget("[::1]:7071")]


def test_a_dns_name_with_several_addresses_is_one_replica_per_address(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def getaddrinfo(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        assert (host, port) == ("center.internal", 7070)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", port)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.2", port)),
                (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fd00::3", port, 0, 0)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    # each address keeps the name for TLS: the certificate names the Center, not the address
    assert resolve_centers(["center.internal:7070"]) == [
        CenterTarget("10.0.0.1:7070", "center.internal"),
        CenterTarget("10.0.0.2:7070", "center.internal"),
        CenterTarget("[fd00::3]:7070", "center.internal")]


def test_a_name_with_one_address_or_none_is_dialled_by_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def getaddrinfo(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        if host == "nowhere.invalid":
            raise socket.gaierror("no such name")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    assert resolve_centers(["center:7070", "nowhere.invalid:7070"]) == [
        CenterTarget("center:7070"), CenterTarget("nowhere.invalid:7070")]


def test_a_proxy_refuses_a_center_list_with_a_bad_entry() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "proxy_svc", "--role", "out", "--service", "chat",
         "--listen", "127.0.0.1:0", "--center", "127.0.0.1:7070,center-b"],
        capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "'center-b' is not HOST:PORT" in done.stderr
