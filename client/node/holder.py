"""The one reference to a node's compiled policy, which a new snapshot replaces whole.

Every host reads `current` once per call and takes no lock: a call sees one policy, never a
mix. `require()` is that read for a call, refused `unavailable` until the first policy is in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

from fastproxy.pipeline.reasons import no_policy_yet

T = TypeVar("T")


class PolicyHolder(Generic[T]):
    """The node's compiled policy, swapped whole. `loaded` is set once a policy is in."""

    def __init__(self, current: T | None = None) -> None:
        self.current: T | None = current
        self.revision = 0
        self.content_hash = ""
        self.loaded = asyncio.Event()
        self._listeners: list[Callable[[T], None]] = []

    def require(self) -> T:
        """The policy in force; `unavailable` (FastProxyError) while there is none."""
        current = self.current
        if current is None:
            raise no_policy_yet()
        return current

    def on_change(self, listener: Callable[[T], None]) -> None:
        self._listeners.append(listener)

    def replace(self, compiled: T, revision: int, digest: str) -> None:
        self.current = compiled
        self.revision, self.content_hash = revision, digest
        self.loaded.set()
        for listener in self._listeners:
            listener(compiled)
