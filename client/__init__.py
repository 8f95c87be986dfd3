"""FastProxy: the client SDK and the shared core (policy model, envelope, keys)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "aio_client_interceptors", "client_interceptors"]

if TYPE_CHECKING:
    from fastproxy.sdk import aio_client_interceptors, client_interceptors

# Imported on first use: `import fastproxy` stays light, and grpc is not imported before the
# CLI sets GRPC_VERBOSITY.
_LAZY = {"client_interceptors": "fastproxy.sdk", "aio_client_interceptors": "fastproxy.sdk"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fastproxy' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
