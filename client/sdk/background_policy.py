"""The SDK's policy, kept fresh on the process's shared background loop.

`CenterWatcher` and `FileWatcher` are asyncio code; running them on their own loop serves sync
and aio channels alike and never depends on the app's loop. The compiled policy is read from
`PolicyHolder.current` (one reference, swapped whole).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from fastproxy.node.holder import PolicyHolder
from fastproxy.node.source import PolicyThread, open_policy_source
from fastproxy.node.watch import NodeIdentity
from fastproxy.v1 import policy_pb2 as pb

from .config import SdkConfig

log = logging.getLogger("fastproxy.sdk")
T = TypeVar("T")
_serial = itertools.count(1)


class BackgroundPolicy(Generic[T]):
    """Watches the policy as a `client` node on the shared background loop; `close()` stops
    watching (calls keep the last policy)."""

    def __init__(self, config: SdkConfig, compile_snapshot: Callable[[pb.PolicySnapshot], T]
                 ) -> None:
        self.holder: PolicyHolder[T] = PolicyHolder()
        # embedded: the out-proxy's whole view (keys included); through an out-proxy the SDK
        # only needs routes, timeouts and retry policies, and is sent no key at all
        role = pb.ROLE_CLIENT if config.embedded else pb.ROLE_APP
        node = NodeIdentity(f"{config.node_id}-{next(_serial)}", role, config.service)
        # a bad policy file fails here, in the app's hands, with the reason
        source = open_policy_source(node, compile_snapshot, self.holder, center=config.center,
                                    policy_file=None if config.center else config.policy_file,
                                    credentials=config.credentials,
                                    pinned_key=config.center_public_key,
                                    cache_dir=config.cache_dir, threaded=True)
        self.where = (f"center {config.center}" if config.center
                      else f"policy file {config.policy_file}")
        self._thread = PolicyThread(source, name=f"fastproxy-sdk-{config.service}").start()

    @property
    def current(self) -> T | None:
        return self.holder.current

    @property
    def refusal(self) -> str:
        """Why the Center refuses this SDK's credential ("" unless it does)."""
        return self._thread.refusal

    def wait(self, timeout_s: float | None) -> T | None:
        """Blocks until a policy is in (or the timeout ran out, or the Center refused the
        credential); the policy or None."""
        self._thread.wait_loaded(timeout_s)
        return self.holder.current

    def close(self, timeout_s: float = 5.0) -> None:
        """Stops watching; calls keep the last policy. Safe to call twice."""
        self._thread.stop(timeout_s)
