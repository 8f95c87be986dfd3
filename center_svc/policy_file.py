"""`--policy FILE`: applies the file at start and again whenever its content changes."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

from center_svc.control import PolicyControl
from center_svc.store import StoreUnavailableError

log = logging.getLogger("center_svc.policy_file")


class PolicyFileWatcher:
    def __init__(self, path: str, control: PolicyControl, interval_s: float = 1.0) -> None:
        self.path = Path(path)
        self.control = control
        self.interval_s = interval_s
        self._seen: str | None = None

    async def apply_if_changed(self) -> bool | None:
        """Applies the file if its bytes changed since last seen. Returns None when unchanged
        or unreadable, False when refused, True when applied or identical to the latest."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            log.error("policy file %s cannot be read: %s", self.path, exc)
            return None
        digest = hashlib.sha256(text.encode()).hexdigest()
        if digest == self._seen:
            return None
        try:
            outcome = await self.control.apply(text, f"file:{self.path}",
                                               f"from --policy {self.path}")
        except StoreUnavailableError as exc:
            # a replica cut off from etcd: try again on the next check
            log.error("policy file %s not applied yet: %s", self.path, exc)
            return None
        self._seen = digest
        if outcome.errors:
            log.error("policy file %s refused; revision %d keeps serving:\n  %s", self.path,
                      self.control.book.revision, "\n  ".join(outcome.errors))
            return False
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.apply_if_changed()
