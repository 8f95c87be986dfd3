"""`fastproxy`: the operator console (policy, nodes, keys, health, demo)."""

from fastproxy.cli.commands import main

__all__ = ["main"]
