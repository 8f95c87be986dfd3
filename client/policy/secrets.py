"""Secret references: `base64:...`, `env:VAR`, `file:PATH`.

Resolution errors describe the reference, never the material.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from pathlib import Path

MAX_FILE_BYTES = 64 * 1024


class SecretError(ValueError):
    pass


def resolve_secret(ref: str, environ: Mapping[str, str] | None = None) -> bytes:
    """Returns the bytes a reference points at.

    `env:` values and `file:` contents are themselves base64 unless they hold a PEM block,
    which is returned as is (ed25519 private keys are often kept as PEM files).
    """
    env = os.environ if environ is None else environ
    scheme, sep, rest = ref.partition(":")
    if not sep or scheme not in ("base64", "env", "file"):
        raise SecretError("must start with base64:, env: or file:")
    if scheme == "base64":
        return _decode_base64(rest, "base64: value")
    if scheme == "env":
        if not rest:
            raise SecretError("env: needs a variable name")
        if rest not in env:
            raise SecretError(f"environment variable {rest} is not set")
        return _decode_text(env[rest], f"environment variable {rest}")
    if not rest:
        raise SecretError("file: needs a path")
    try:
        with Path(rest).open("rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise SecretError(f"file {rest} cannot be read ({exc.strerror or 'error'})") from None
    except ValueError:  # e.g. a NUL byte in the path
        raise SecretError("file: path is not a valid path") from None
    if len(raw) > MAX_FILE_BYTES:  # a key file is small; this also stops at /dev/zero
        raise SecretError(f"file {rest} is larger than {MAX_FILE_BYTES} bytes")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return raw  # a binary key file: the raw bytes are the key
    return _decode_text(text, f"file {rest}")


def _decode_text(text: str, what: str) -> bytes:
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        return stripped.encode("ascii") + b"\n"
    return _decode_base64(stripped, what)


def _decode_base64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SecretError(f"{what} is not valid base64") from None
