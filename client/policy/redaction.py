"""Secret values in policy YAML text: found, replaced, redacted, kept across an edit.

A secret value is the `secret` or `private` field of a key under `keys:` written inline
(`base64:...`, or anything that is not a reference). A reference (`env:VAR`, `file:PATH`) says
where the secret is, not what it is, and is shown as written.

Values are replaced in the text itself, at the positions the YAML parser reports, so the
rest of the document (comments, order, layout) stays exactly as the operator wrote it. This
module only reads and rewrites text; it never validates a policy (`schema.load_policy` does).

- `redact_policy`: every secret value becomes `<redacted>` (what `fastproxy policy get`
  shows without `--show-secrets`).
- `restore_redacted`: a document whose values read `<redacted>` (one fetched, edited and
  applied back) takes the values the previous revision had at the same place.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import yaml

REDACTED = "<redacted>"
MATERIAL_FIELDS = ("secret", "private")
REFERENCE_PREFIXES = ("env:", "file:")


@dataclass(frozen=True, slots=True)
class SecretField:
    """One secret value in a document: `keys.NAME.secret` or `keys.NAME.private`, its
    scalar value, and where its scalar is in the text (start, end offsets)."""

    path: str
    value: str
    start: int
    end: int

    @property
    def is_reference(self) -> bool:
        return self.value.startswith(REFERENCE_PREFIXES)


class RedactedValueError(ValueError):
    """`<redacted>` where the previous revision has no value to keep; `errors` name the
    fields, as validation errors do."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def secret_fields(text: str) -> list[SecretField]:
    """The secret fields of a policy document, in document order; none when the text is not
    a YAML mapping with a `keys:` mapping (validation reports that)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError):
        return []
    return list(_fields(root))


def _fields(root: yaml.Node | None) -> Iterator[SecretField]:
    keys = _child(root, "keys")
    if not isinstance(keys, yaml.MappingNode):
        return
    seen: set[tuple[int, int]] = set()
    for name_node, spec in keys.value:
        if not isinstance(spec, yaml.MappingNode):
            continue
        for field in MATERIAL_FIELDS:
            value = _child(spec, field)
            if not isinstance(value, yaml.ScalarNode) or value.tag != "tag:yaml.org,2002:str":
                continue
            span = (value.start_mark.index, value.end_mark.index)
            if span in seen:  # an alias of a value already listed
                continue
            seen.add(span)
            yield SecretField(f"keys.{name_node.value}.{field}", value.value, *span)


def _child(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    for key_node, value in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
            found: yaml.Node = value
            return found
    return None


def replace_values(text: str, fields: list[SecretField],
                   new_value: Callable[[SecretField], str | None]) -> str:
    """`text` with each field's scalar replaced by `new_value(field)` (written as a
    double-quoted scalar), or left as is where that returns None."""
    out = text
    for field in sorted(fields, key=lambda f: f.start, reverse=True):
        value = new_value(field)
        if value is None:
            continue
        original = out[field.start:field.end]
        # a block scalar's span ends with its line break: keep the line structure
        tail = original[len(original.rstrip("\n")):]
        out = out[:field.start] + json.dumps(value) + tail + out[field.end:]
    return out


def redact_policy(text: str) -> str:
    """Every inline secret value replaced by `<redacted>`; references shown as written."""
    return replace_values(text, secret_fields(text),
                          lambda f: None if f.is_reference or f.value == REDACTED
                          else REDACTED)


def has_redacted_values(text: str) -> bool:
    return any(f.value == REDACTED for f in secret_fields(text))


def restore_redacted(text: str, previous: str | None) -> str:
    """`text` with each `<redacted>` value replaced by the value the same field has in
    `previous` (the latest revision); RedactedValueError naming the fields that have none."""
    fields = [f for f in secret_fields(text) if f.value == REDACTED]
    if not fields:
        return text
    kept: Mapping[str, str] = {f.path: f.value for f in secret_fields(previous or "")
                               if f.value != REDACTED}
    missing = [f"{f.path}: is {REDACTED}, but the latest revision has no such value to keep"
               for f in fields if f.path not in kept]
    if missing:
        raise RedactedValueError(missing)
    return replace_values(text, fields, lambda f: kept[f.path])
