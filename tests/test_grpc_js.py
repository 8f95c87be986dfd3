"""An app in another language: a plain grpc-js client (Node, `tests/js/echo_client.js`, no
FastProxy code) points its channel at the out-proxy and makes every RPC kind, with text and
binary metadata both ways, an app error that passes through unchanged, and calls its caller's
rules deny. Needs node and npm (`.ci/run` installs them); @grpc/grpc-js comes from the npm
registry into a temporary folder."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.dataplane import CALLER, NARROW, FileStack, Proxies, start_file_stack
from support.upstream_app import UpstreamProcess

JS = Path(__file__).parent / "js"
OK, NOT_FOUND, PERMISSION_DENIED = 0, 5, 7

pytestmark = pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None,
                                reason="node and npm are not installed (apt-get install "
                                       "nodejs npm)")


@pytest.fixture(scope="module")
def client_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("grpc-js")
    for name in ("package.json", "echo_client.js"):
        shutil.copy(JS / name, folder / name)
    done = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent"],
                          cwd=folder, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return folder


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileStack]:
    directory = tmp_path_factory.mktemp("grpc-js-stack")
    with UpstreamProcess(name="song") as upstream:
        proxies = Proxies(directory)
        try:
            yield start_file_stack(proxies, upstream.address, directory,
                                   callers=(CALLER, NARROW))
        finally:
            proxies.stop_all()


def run_client(client_dir: Path, address: str) -> dict[str, Any]:
    done = subprocess.run(["node", "echo_client.js", address], cwd=client_dir,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    results: dict[str, Any] = json.loads(done.stdout)
    return results


def test_a_grpc_js_app_makes_every_rpc_kind_through_the_out_proxy(
        client_dir: Path, stack: FileStack) -> None:
    results = run_client(client_dir, stack.outproxies[CALLER].address)
    expected = {"unary": ["hello from js"], "client_stream": ["abc"],
                "server_stream": ["tick"] * 3, "bidi": ["ping", "pong"]}
    for kind, values in expected.items():
        seen = results[kind]
        assert (seen["code"], seen["values"]) == (OK, values), (kind, seen)
        # text and binary metadata, there and back, as the app set them
        assert seen["headers"] == {"x-echo-lang": "js"}, (kind, seen)
        assert seen["trailers"] == {"x-echo-lang": "js", "x-echo-bin": "000102ff"}, (kind, seen)
    error = results["app_error"]
    assert (error["code"], error["details"]) == (NOT_FOUND, "no such thing")
    assert "fastproxy-error" not in error["trailers"]  # the app's own status, unchanged


def test_a_grpc_js_app_outside_its_rules_is_denied_with_our_trailers(
        client_dir: Path, stack: FileStack) -> None:
    """narrow_service may call Unary only."""
    results = run_client(client_dir, stack.outproxies[NARROW].address)
    assert results["unary"]["code"] == OK
    for kind in ("client_stream", "server_stream", "bidi"):
        seen = results[kind]
        assert seen["code"] == PERMISSION_DENIED, (kind, seen)
        assert seen["trailers"]["fastproxy-error"] == "denied"
        assert seen["trailers"]["fastproxy-rule"] == "none"
        assert seen["trailers"]["fastproxy-proxy"] == "in"
