"""Fresh key material, written as one policy `keys:` entry (`fastproxy keys gen`, and the new
key of a rotation that the Center makes for `fastproxy keys rotate`).

The entry is a single YAML line (`name: {type: ..., secret: "base64:..."}`) so an operator can
paste it under `keys:` as is. Generating material is the purpose of this module, so it is the
one place whose output holds secrets.
"""

from __future__ import annotations

import base64
import datetime
import os
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fastproxy.policy.model import KeyType
from fastproxy.policy.schema import NAME_RE

SYMMETRIC_KEY_BYTES = 32
KEY_TYPE_NAMES: tuple[str, ...] = tuple(t.value for t in KeyType)


@dataclass(frozen=True, slots=True)
class GeneratedKey:
    """A new key: its policy name, type, the secret reference and, for ed25519, the public
    half (safe to share; printed as a comment so verifiers can be checked by eye)."""

    name: str
    type: KeyType
    material_ref: str = field(repr=False)
    public_ref: str = ""

    @property
    def material_field(self) -> str:
        return "private" if self.type is KeyType.ED25519 else "secret"

    def policy_entry(self) -> str:
        """One line to paste under `keys:` of a policy file."""
        line = (f'{self.name}: {{type: {self.type.value}, '
                f'{self.material_field}: "{self.material_ref}"}}')
        if self.public_ref:
            line += f"  # public: {self.public_ref}"
        return line

    def as_json(self) -> dict[str, str]:
        out = {"name": self.name, "type": self.type.value,
               self.material_field: self.material_ref}
        if self.public_ref:
            out["public"] = self.public_ref
        return out

    def __repr__(self) -> str:
        return f"GeneratedKey(name={self.name!r}, type={self.type.value!r}, <redacted>)"


def default_key_name(key_type: KeyType, today: datetime.date | None = None) -> str:
    """`<type>-<yyyymmdd>`, e.g. `aes-256-gcm-20260131`: unique enough for a rotation."""
    day = today or datetime.datetime.now(datetime.UTC).date()
    return f"{key_type.value}-{day:%Y%m%d}"


def generate_key(key_type: KeyType, name: str | None = None) -> GeneratedKey:
    """Makes new random material of `key_type`; raises ValueError on an invalid name."""
    key_name = name if name is not None else default_key_name(key_type)
    if not NAME_RE.fullmatch(key_name):
        raise ValueError(
            f"{key_name!r} is not a valid key name (letters, digits, '.', '_', '-')"
        )
    if key_type is KeyType.ED25519:
        private = Ed25519PrivateKey.generate()
        seed = private.private_bytes(serialization.Encoding.Raw,
                                     serialization.PrivateFormat.Raw,
                                     serialization.NoEncryption())
        public = private.public_key().public_bytes(serialization.Encoding.Raw,
                                                   serialization.PublicFormat.Raw)
        return GeneratedKey(key_name, key_type, _base64_ref(seed), _base64_ref(public))
    return GeneratedKey(key_name, key_type, _base64_ref(os.urandom(SYMMETRIC_KEY_BYTES)))


def _base64_ref(raw: bytes) -> str:
    return "base64:" + base64.b64encode(raw).decode("ascii")
