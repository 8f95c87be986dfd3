"""Key rotation in steps, as policy documents (`fastproxy keys rotate`): no gRPC, no store.

Rotating key K to its successor S (`name-vN` -> `name-vN+1`, else `K-v2`) is three revisions,
each applied only once every connected node ACKed the one before (the CLI waits):

1. `added`: S is made (new random material) and accepted wherever K is used (`accept`), so
   every node can verify or open what S will sign or seal;
2. `in_use`: S becomes the key used, K stays accepted (sessions opened with K still serve
   calls until they are renewed);
3. `retired`: K is removed from every `accept` and from `keys`: no node holds it any more.

The step to take is read from the document itself, so a rotation stopped half-way (a NACK, a
timeout) goes on from where it is (`--resume`), and nothing is half-done: each step is one
revision or none.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from fastproxy.policy.keygen import generate_key
from fastproxy.policy.model import KeyType

REF_FIELDS = ("identity", "encrypt")
_VERSIONED = re.compile(r"(?P<base>.+)-v(?P<n>\d+)")


class Phase(enum.Enum):
    NOT_STARTED = "not_started"
    ADDED = "added"  # step 1 applied
    IN_USE = "in_use"  # step 2 applied
    DONE = "done"  # step 3 applied: K is gone


STEPS = {Phase.NOT_STARTED: 1, Phase.ADDED: 2, Phase.IN_USE: 3}


class RotationError(ValueError):
    """The rotation cannot go on from this document (named in the message)."""


def successor_name(key: str) -> str:
    match = _VERSIONED.fullmatch(key)
    if match is None:
        return f"{key}-v2"
    return f"{match['base']}-v{int(match['n']) + 1}"


@dataclass(frozen=True, slots=True)
class Rotation:
    key: str
    successor: str
    phase: Phase


def _refs(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every key reference of every service (`identity`, `encrypt`)."""
    services = document.get("services") or {}
    for spec in services.values():
        if not isinstance(spec, dict):
            continue
        for name in REF_FIELDS:
            ref = spec.get(name)
            if isinstance(ref, dict) and "key" in ref:
                yield ref


def _accepts(ref: dict[str, Any]) -> list[str]:
    accept = ref.get("accept")
    return list(accept) if isinstance(accept, list) else []


def phase_of(document: dict[str, Any], key: str) -> Rotation:
    successor = successor_name(key)
    keys = document.get("keys") or {}
    refs = list(_refs(document))
    using = [r for r in refs if r["key"] == key]
    accepting = [r for r in refs if key in _accepts(r)]
    if key not in keys:
        if successor in keys and not accepting:
            return Rotation(key, successor, Phase.DONE)
        raise RotationError(f"no key {key!r} in the policy")
    if successor not in keys:
        if not using:
            raise RotationError(f"key {key!r} is used by no service (identity or encrypt): "
                                "nothing to rotate")
        return Rotation(key, successor, Phase.NOT_STARTED)
    if using:
        if any(successor not in _accepts(r) for r in using):
            raise RotationError(f"key {successor!r} exists but is not accepted where {key!r} "
                                "is used: it was not made by this rotation")
        return Rotation(key, successor, Phase.ADDED)
    return Rotation(key, successor, Phase.IN_USE)


def next_step(document: dict[str, Any], key: str, new_type: KeyType | None = None
              ) -> tuple[dict[str, Any], Rotation]:
    """The document after the next step of rotating `key`, and the phase it reaches.
    RotationError when there is no next step (done) or the document does not allow one."""
    rotation = phase_of(document, key)
    successor = rotation.successor
    keys: dict[str, Any] = dict(document.get("keys") or {})
    if rotation.phase is Phase.DONE:
        raise RotationError(f"{key!r} was rotated already: {successor!r} replaced it")
    if rotation.phase is Phase.NOT_STARTED:
        old_type = KeyType(keys[key]["type"])
        kind = new_type or old_type
        if kind.signs != old_type.signs:
            raise RotationError(f"{key!r} is a {old_type.value} key: its successor must be "
                                f"{'a signing' if old_type.signs else 'an encryption'} key too, "
                                f"not {kind.value}")
        made = generate_key(kind, successor)
        keys[successor] = {"type": kind.value, made.material_field: made.material_ref}
        for ref in _refs(document):
            if ref["key"] == key:
                ref["accept"] = [*_accepts(ref), successor]
        reached = Phase.ADDED
    elif rotation.phase is Phase.ADDED:
        for ref in _refs(document):
            if ref["key"] == key:
                ref["key"] = successor
                ref["accept"] = [key, *(k for k in _accepts(ref) if k not in (key, successor))]
        reached = Phase.IN_USE
    else:
        for ref in _refs(document):
            if key in _accepts(ref):
                kept = [k for k in _accepts(ref) if k != key]
                if kept:
                    ref["accept"] = kept
                else:
                    ref.pop("accept", None)
        del keys[key]
        reached = Phase.DONE
    document["keys"] = keys
    return document, Rotation(key, successor, reached)


def rotated_yaml(yaml_text: str, key: str, new_type: KeyType | None = None
                 ) -> tuple[str, Rotation]:
    """`next_step` on a YAML document (comments and layout are not kept)."""
    document = yaml.safe_load(yaml_text)
    if not isinstance(document, dict):
        raise RotationError("the policy is not a mapping")
    changed, rotation = next_step(document, key, new_type)
    return yaml.safe_dump(changed, sort_keys=False, default_flow_style=False), rotation
