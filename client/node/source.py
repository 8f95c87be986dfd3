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

from fastproxy.node.credentials import CenterCredentials
from fastproxy.node.holder import PolicyHolder
from fastproxy.node.watch import CenterWatcher, Compile, FileWatcher, NodeIdentity
from fastproxy.pipeline.node_policy import NodePolicyError

log = logging.getLogger("fastproxy.node.source")

T = TypeVar("T")
PolicySource = CenterWatcher[T] | FileWatcher[T]


class PolicySourceError(ValueError):
    """A policy file that cannot be used at start; the message names the file and why."""


def open_policy_source(node: NodeIdentity, compile_snapshot: Compile[T],
                       holder: PolicyHolder[T], *, center: str | None = None,
                       policy_file: str | None = None,
                       credentials: CenterCredentials | None = None,
                       pinned_key: bytes | None = None, cache_dir: str | None = None,
                       file_poll_s: float = 1.0, threaded: bool = False) -> PolicySource[T]:
    """The watcher for `center` or `policy_file` (exactly one). A file is loaded before this
    returns, so a bad file fails here with `PolicySourceError`; the Center is only contacted
    once the watcher's `run()` is started. `threaded`: the Center's stream on sync gRPC, for
    a watcher run by `PolicyThread` (no grpc.aio beside the app's own loop)."""
    if (center is None) == (policy_file is None):
        raise ValueError("give exactly one of center and policy_file")
    if center is not None:
        return CenterWatcher(center, node, compile_snapshot, holder, credentials=credentials,
                             pinned_key=pinned_key, cache_dir=cache_dir, threaded=threaded)
    assert policy_file is not None
    from fastproxy.policy.schema import PolicyError  # YAML only where a file is used

    source = FileWatcher(policy_file, node, compile_snapshot, holder, file_poll_s)
    try:
        source.load()
    except PolicyError as exc:
        raise PolicySourceError(f"--policy {policy_file} refused: "
                                + "; ".join(exc.errors)) from None
    except (NodePolicyError, OSError, ValueError) as exc:
        raise PolicySourceError(f"--policy {policy_file} refused: {exc}") from None
    return source


_shared_lock = threading.Lock()
_shared: asyncio.AbstractEventLoop | None = None


def shared_loop() -> asyncio.AbstractEventLoop:
    """One event loop, on one daemon thread, for every watcher of this process whose host is
    not asyncio (or must not use the app's loop). grpc.aio delivers a call's completions to
    the call's loop from its own poller thread; a loop closed while a channel winds down
    makes that fail ("Event loop is closed"), so this loop lives as long as the process."""
    global _shared
    with _shared_lock:
        if _shared is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="fastproxy-policy",
                             daemon=True).start()
            _shared = loop
        return _shared


class PolicyThread:
    """Runs one policy source's `run()` on the shared background loop.

    The holder it fills is read from any thread (`holder.current` is one reference);
    `wait_loaded` blocks until the first policy is in. `stop` cancels the watcher (which
    ends its Center stream, hence the endpoint registration) and waits for it to end.
    """

    def __init__(self, source: PolicySource[Any], name: str = "fastproxy-policy") -> None:
        self._source = source
        self.name = name
        self._task: asyncio.Task[None] | None = None
        self._loaded = threading.Event()
        # woken when a policy is in or the Center refuses the node's credential
        self._changed = threading.Condition()
        source.holder.on_change(lambda _policy: self._notify(loaded=True))
        if isinstance(source, CenterWatcher):
            source.on_refused(lambda _refusal: self._notify())
        if source.holder.current is not None:
            self._loaded.set()

    def _notify(self, loaded: bool = False) -> None:
        with self._changed:
            if loaded:
                self._loaded.set()
            self._changed.notify_all()

    @property
    def refusal(self) -> str:
        """Why the Center refuses this node's credential ("" unless it does)."""
        return self._source.refusal if isinstance(self._source, CenterWatcher) else ""

    def start(self) -> PolicyThread:
        async def create() -> asyncio.Task[None]:
            return asyncio.get_running_loop().create_task(self._guarded(), name=self.name)

        self._task = asyncio.run_coroutine_threadsafe(create(), shared_loop()).result()
        return self

    def wait_loaded(self, timeout: float | None = None) -> bool:
        """True once a policy is in; False after `timeout`, or at once while the Center
        refuses the node's credential (see `refusal`)."""
        with self._changed:
            self._changed.wait_for(lambda: self._loaded.is_set() or bool(self.refusal),
                                   timeout)
        return self._loaded.is_set()

    def stop(self, timeout: float = 5.0) -> None:
        task = self._task
        if task is None or task.done():
            return

        async def cancel() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        with contextlib.suppress(TimeoutError):
            asyncio.run_coroutine_threadsafe(cancel(), shared_loop()).result(timeout)

    async def _guarded(self) -> None:
        try:
            await self._source.run()
        except asyncio.CancelledError:
            raise
        except Exception:  # a watcher must not die silently
            log.exception("policy source %s stopped", self.name)
