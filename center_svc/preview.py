"""What applying a candidate policy would change, computed and applied nowhere: the diff
(secret values redacted), the connected nodes whose snapshot would change, and the services
it removes that still have connected nodes. No gRPC here.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from center_svc.nodes import NodeSession
from center_svc.snapshots import audience_of
from fastproxy.policy.model import Policy
from fastproxy.policy.scope import content_hash, scope_snapshot

SECRET_FIELDS = ("secret", "private")
REFERENCES = ("env:", "file:")  # where a secret is, not the secret: shown as written


@dataclass(frozen=True, slots=True)
class Preview:
    changed: bool  # applying would make a revision (the text differs; the diff may not)
    diff: str
    nodes_to_update: tuple[NodeSession, ...]
    nodes_unchanged: int
    removed_services: tuple[str, ...]
    removed_services_with_nodes: tuple[str, ...]


def redacted(document: Any) -> Any:
    """The policy document with every inline secret value replaced by a short fingerprint
    (`<redacted sha256:1a2b3c4d>`), so that a diff shows that a secret changed, not what it
    is. `env:` and `file:` references are kept: they say where a secret is."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), dict):
        return document
    keys = {}
    for name, spec in document["keys"].items():
        if isinstance(spec, dict):
            spec = {field: _redact(value) if field in SECRET_FIELDS else value
                    for field, value in spec.items()}
        keys[name] = spec
    return {**document, "keys": keys}


def _redact(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(REFERENCES):
        return value
    digest = hashlib.sha256(str(value).encode()).hexdigest()[:8]
    return f"<redacted sha256:{digest}>"


def policy_diff(old_yaml: str, new_yaml: str, old_name: str, new_name: str) -> str:
    """A unified diff of two policy documents, secrets redacted, in a canonical layout (the
    order of the documents, one block style): a change of formatting alone shows nothing."""
    def lines(text: str) -> list[str]:
        if not text:
            return []
        dumped = yaml.safe_dump(redacted(yaml.safe_load(text)), sort_keys=False,
                                default_flow_style=False, allow_unicode=True)
        return dumped.splitlines(keepends=True)
    return "".join(difflib.unified_diff(lines(old_yaml), lines(new_yaml), old_name, new_name))


def preview(latest: Policy | None, latest_yaml: str, latest_name: str, candidate: Policy,
            candidate_yaml: str, candidate_name: str, sessions: Iterable[NodeSession],
            registered: Mapping[str, Sequence[str]]) -> Preview:
    diff = policy_diff(latest_yaml, candidate_yaml, latest_name, candidate_name)
    to_update: list[NodeSession] = []
    unchanged = 0
    hashes: dict[tuple[int, str], tuple[str, str]] = {}  # by audience: (now, candidate)
    nodes_of: dict[str, int] = {}
    for session in sessions:
        nodes_of[session.service] = nodes_of.get(session.service, 0) + 1
        audience = audience_of(session.role, session.service)
        if audience not in hashes:
            now = ("" if latest is None else
                   content_hash(scope_snapshot(latest, audience[0], session.service,
                                               registered)))
            hashes[audience] = (now, content_hash(scope_snapshot(
                candidate, audience[0], session.service, registered)))
        now, then = hashes[audience]
        if now != then:
            to_update.append(session)
        else:
            unchanged += 1
    removed = tuple(sorted(set(latest.services) - set(candidate.services))) if latest else ()
    return Preview(changed=candidate_yaml != latest_yaml, diff=diff,
                   nodes_to_update=tuple(to_update), nodes_unchanged=unchanged,
                   removed_services=removed,
                   removed_services_with_nodes=tuple(s for s in removed if nodes_of.get(s)))
