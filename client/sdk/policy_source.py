"""The SDK's policy, kept fresh on a background thread with its own event loop.

`CenterWatcher` and `FileWatcher` are asyncio code; running them on their own loop serves sync
and aio channels alike and never depends on the app's loop. The compiled policy is read from
`PolicyHolder.current` (one reference, swapped whole); `loaded` tells waiting calls it is in.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from fastproxy.v1 import policy_pb2 as pb
from fastproxy.watch import CenterWatcher, FileWatcher, NodeIdentity, PolicyHolder

from .config import SdkConfig

log = logging.getLogger("fastproxy.sdk")
T = TypeVar("T")
_serial = itertools.count(1)


class BackgroundPolicy(Generic[T]):
    """Watches the policy as a `client` node; `close()` stops the thread."""

    def __init__(self, config: SdkConfig, compile_snapshot: Callable[[pb.PolicySnapshot], T]
                 ) -> None:
        self.holder: PolicyHolder[T] = PolicyHolder()
        self.loaded = threading.Event()
        self.holder.on_change(lambda _policy: self.loaded.set())
        node = NodeIdentity(f"{config.node_id}-{next(_serial)}", pb.ROLE_CLIENT,
                            config.service)
        self._run: Callable[[], Coroutine[Any, Any, None]]
        if config.center:
            watcher = CenterWatcher(config.center, node, compile_snapshot, self.holder,
                                    credentials=config.credentials,
                                    pinned_key=config.center_public_key,
                                    cache_dir=config.cache_dir)
            self._run = watcher.run
            self.where = f"center {config.center}"
        else:
            assert config.policy_file is not None
            files = FileWatcher(config.policy_file, node, compile_snapshot, self.holder)
            files.load()  # a bad file fails here, in the app's hands, with the reason
            self._run = files.run
            self.where = f"policy file {config.policy_file}"
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._serve, name="fastproxy-policy",
                                        daemon=True)
        self._closed = False
        self._thread.start()

    @property
    def current(self) -> T | None:
        return self.holder.current

    def wait(self, timeout_s: float | None) -> T | None:
        """Blocks until a policy is in (or the timeout ran out); the policy or None."""
        self.loaded.wait(timeout_s)
        return self.holder.current

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._task = self._loop.create_task(self._run())
        with contextlib.suppress(asyncio.CancelledError):
            self._loop.run_until_complete(self._task)
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stops watching; calls keep the last policy. Safe to call twice."""
        if self._closed:
            return
        self._closed = True

        def cancel() -> None:
            if self._task is not None:
                self._task.cancel()

        with contextlib.suppress(RuntimeError):  # the loop already stopped
            self._loop.call_soon_threadsafe(cancel)
        self._thread.join(timeout_s)
