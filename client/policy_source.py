"""Where a node's compiled policy comes from, chosen once: the Center or a local YAML file.

Shared by every host of the data plane (the proxies, the embedded server, the SDK): each
builds a `PolicyHolder`, a compile function and a `NodeIdentity`, and `open_policy_source`
gives the watcher that keeps the holder current. `PolicyThread` runs such a watcher on its
own event loop in a daemon thread, for hosts that are not asyncio (sync gRPC servers and
channels), or that must not depend on the caller's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any, TypeVar

from fastproxy.center_credentials import CenterCredentials
from fastproxy.node_policy import NodePolicyError
from fastproxy.policy import PolicyError
from fastproxy.watch import CenterWatcher, Compile, FileWatcher, NodeIdentity, PolicyHolder

log = logging.getLogger("fastproxy.policy_source")

T = TypeVar("T")
PolicySource = CenterWatcher[T] | FileWatcher[T]


class PolicySourceError(ValueError):
    """A policy file that cannot be used at start; the message names the file and why."""


def open_policy_source(node: NodeIdentity, compile_snapshot: Compile[T],
                       holder: PolicyHolder[T], *, center: str | None = None,
                       policy_file: str | None = None,
                       credentials: CenterCredentials | None = None,
                       pinned_key: bytes | None = None, cache_dir: str | None = None,
                       file_poll_s: float = 1.0) -> PolicySource[T]:
    """The watcher for `center` or `policy_file` (exactly one). A file is loaded before this
    returns, so a bad file fails here with `PolicySourceError`; the Center is only contacted
    once the watcher's `run()` is started."""
    if (center is None) == (policy_file is None):
        raise ValueError("give exactly one of center and policy_file")
    if center is not None:
        return CenterWatcher(center, node, compile_snapshot, holder, credentials=credentials,
                             pinned_key=pinned_key, cache_dir=cache_dir)
    assert policy_file is not None
    source = FileWatcher(policy_file, node, compile_snapshot, holder, file_poll_s)
    try:
        source.load()
    except PolicyError as exc:
        raise PolicySourceError(f"--policy {policy_file} refused: "
                                + "; ".join(exc.errors)) from None
    except (NodePolicyError, OSError, ValueError) as exc:
        raise PolicySourceError(f"--policy {policy_file} refused: {exc}") from None
    return source


class PolicyThread:
    """Runs one policy source's `run()` on a private event loop in a daemon thread.

    The holder it fills is read from any thread (`holder.current` is one reference);
    `wait_loaded` blocks until the first policy is in. `stop` cancels the watcher (which
    ends its Center stream, hence the endpoint registration) and joins the thread.
    """

    def __init__(self, source: PolicySource[Any], name: str = "fastproxy-policy") -> None:
        self._source = source
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task[None] | None = None
        self._loaded = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        source.holder.on_change(lambda _policy: self._loaded.set())
        if source.holder.current is not None:
            self._loaded.set()

    def start(self) -> PolicyThread:
        self._task = self._loop.create_task(self._source.run())
        self._thread.start()
        return self

    def wait_loaded(self, timeout: float | None = None) -> bool:
        return self._loaded.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        if not self._thread.is_alive():
            return
        task = self._task
        if task is not None:
            self._loop.call_soon_threadsafe(task.cancel)
        self._thread.join(timeout)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            assert self._task is not None
            with contextlib.suppress(asyncio.CancelledError):
                self._loop.run_until_complete(self._task)
        except Exception:  # a watcher must not die silently
            log.exception("policy source stopped")
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()
