"""`fastproxy policy apply --dry-run`, `fastproxy policy diff`, and the check `policy apply`
makes before it removes services whose nodes are connected: what a policy would change,
as the Center computes it (`PreviewPolicy`), applying nothing."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from fastproxy.cli import format as cli_format
from fastproxy.v1 import center_pb2

EXIT_OK = 0


def preview_row(found: center_pb2.PreviewPolicyResponse) -> dict[str, Any]:
    return {
        "errors": list(found.errors),
        "latest_revision": found.latest_revision,
        "changed": found.changed,
        "diff": found.diff,
        "nodes_to_update": [{"node_id": n.node_id, "role": cli_format.ROLE_NAMES.get(n.role),
                             "service": n.service} for n in found.nodes_to_update],
        "nodes_unchanged": found.nodes_unchanged,
        "removed_services": list(found.removed_services),
        "removed_services_with_nodes": list(found.removed_services_with_nodes),
    }


def preview_text(found: center_pb2.PreviewPolicyResponse, applies: bool) -> str:
    base = f"revision {found.latest_revision}" if found.latest_revision else "no policy yet"
    if not found.changed:
        return f"no change: identical to the latest revision ({base})"
    lines = [f"compared with the latest: {base}"
             + (f"; applying makes revision {found.latest_revision + 1}" if applies else "")]
    lines.append(found.diff.rstrip("\n") if found.diff
                 else "(the same policy, written differently)")
    count = len(found.nodes_to_update)
    lines.append(f"nodes that would get a new snapshot: {count} (unchanged: "
                 f"{found.nodes_unchanged})")
    lines += [f"  {n.node_id} ({cli_format.ROLE_NAMES.get(n.role, n.role)}, {n.service})"
              for n in found.nodes_to_update]
    if found.removed_services:
        lines.append(f"services removed: {', '.join(found.removed_services)}")
    if found.removed_services_with_nodes:
        lines.append("removed services with connected nodes: "
                     f"{', '.join(found.removed_services_with_nodes)}")
    return "\n".join(lines)


def show(args: argparse.Namespace, found: center_pb2.PreviewPolicyResponse, *,
         applies: bool) -> int:
    from fastproxy.cli.commands import CliError

    if args.json:
        sys.stdout.write(cli_format.to_json(preview_row(found)) + "\n")
    if found.errors:
        count = len(found.errors)
        raise CliError(f"the Center refused the policy ({count} "
                       f"error{'s' if count != 1 else ''}):", found.errors)
    if not args.json:
        sys.stdout.write(preview_text(found, applies) + "\n")
    return EXIT_OK


def confirm_removals(removed: list[str]) -> None:
    """The Center refused an apply that removes services whose nodes are connected: go on
    only when the operator says so on a terminal (without one, `--yes` is the way)."""
    from fastproxy.cli.commands import CliError

    question = (f"this policy removes {', '.join(removed)}, whose nodes are connected now "
                "(they would be sent an empty policy)")
    if not sys.stdin.isatty():
        raise CliError(f"{question}; run again with --yes to apply it anyway")
    sys.stderr.write(f"fastproxy: {question}. Apply anyway? [y/N] ")
    sys.stderr.flush()
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):
        raise CliError("not applied")
