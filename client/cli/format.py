"""How `fastproxy` shows the Center's answers: plain rows for JSON, aligned tables for people.

Each view picks its fields one by one from the protobuf message (never a blanket
message-to-dict), so nothing the Center might add later, key material least of all, reaches
the output without a decision here.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from typing import Any

from fastproxy.v1 import center_pb2, policy_pb2

SHORT_HASH_LENGTH = 12
MAX_CELL_WIDTH = 60

ROLE_NAMES = {
    policy_pb2.ROLE_UNSPECIFIED: "?",
    policy_pb2.ROLE_IN: "in",
    policy_pb2.ROLE_OUT: "out",
    policy_pb2.ROLE_CLIENT: "client",
    policy_pb2.ROLE_APP: "app",
}


def format_time(unix: float) -> str:
    """UTC, to the second: `2026-01-31 12:00:00Z`; empty for an unset time."""
    if unix <= 0:
        return ""
    moment = datetime.datetime.fromtimestamp(unix, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def short_hash(content_hash: str) -> str:
    return content_hash[:SHORT_HASH_LENGTH]


def revision_row(info: center_pb2.RevisionInfo) -> dict[str, Any]:
    return {
        "revision": info.revision,
        "created": format_time(info.created_unix),
        "created_unix": info.created_unix,
        "author": info.author,
        "comment": info.comment,
        "content_hash": info.content_hash,
        "rolled_back_from": info.rolled_back_from or None,
    }


def audit_row(event: center_pb2.AuditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "time": format_time(event.time_unix),
        "time_unix": event.time_unix,
        "actor": event.actor,
        "peer": event.peer,
        "action": event.action,
        "revision": event.revision or None,
        "detail": event.detail,
    }


def node_row(node: center_pb2.NodeStatus) -> dict[str, Any]:
    return {
        "node_id": node.node_id,
        "role": ROLE_NAMES.get(node.role, str(node.role)),
        "service": node.service,
        "peer": node.peer,
        "connected_since": format_time(node.connected_since_unix),
        "connected_since_unix": node.connected_since_unix,
        "sent_revision": node.sent_revision,
        "acked_revision": node.acked_revision,
        "acked_hash": node.acked_hash,
        "state": "current" if node.current else "behind",
        "nacked_revision": node.nacked_revision or None,
        "nack_error": node.nack_error,
        "registered_addresses": list(node.registered_addresses),
    }


def apply_result(response: center_pb2.ApplyPolicyResponse) -> dict[str, Any]:
    return {
        "applied": response.applied,
        "revision": revision_row(response.revision) if response.HasField("revision") else None,
        "errors": list(response.errors),
        "message": response.message,
    }


def history_table(revisions: Sequence[center_pb2.RevisionInfo]) -> str:
    if not revisions:
        return "no revisions yet"
    rows = [
        [str(r.revision), format_time(r.created_unix), r.author, r.comment,
         short_hash(r.content_hash), str(r.rolled_back_from) if r.rolled_back_from else ""]
        for r in revisions
    ]
    return render_table(["REVISION", "TIME", "AUTHOR", "COMMENT", "HASH", "ROLLBACK OF"], rows)


AUDIT_TITLE = "changes and refusals (newest first):"


def audit_table(events: Sequence[center_pb2.AuditEvent]) -> str:
    if not events:
        return "no audit events yet"
    rows = [
        [format_time(e.time_unix), e.actor, e.action, str(e.revision) if e.revision else "",
         e.peer, e.detail]
        for e in events
    ]
    return render_table(["TIME", "ACTOR", "ACTION", "REVISION", "PEER", "DETAIL"], rows)


def nodes_table(response: center_pb2.ListNodesResponse) -> str:
    latest = f"latest revision: {response.latest_revision or 'none'}"
    if not response.nodes:
        return f"{latest}\nno nodes connected"
    rows = []
    for node in response.nodes:
        nack = (f"{node.nacked_revision}: {node.nack_error}" if node.nacked_revision
                else node.nack_error)
        rows.append([
            node.node_id, ROLE_NAMES.get(node.role, str(node.role)), node.service, node.peer,
            format_time(node.connected_since_unix),
            str(node.acked_revision) if node.acked_revision else "-",
            "current" if node.current else "behind",
            nack, ", ".join(node.registered_addresses),
        ])
    # STATE: whether the node runs the latest content for it; ACKED may be an older revision
    # when later ones did not change what the node is sent
    headers = ["NODE", "ROLE", "SERVICE", "PEER", "CONNECTED SINCE", "ACKED", "STATE",
               "LAST NACK", "ADDRESSES"]
    return f"{latest}\n{render_table(headers, rows)}"


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart; cells kept on one line and cut when too long."""
    cells = [[_cell(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = [_line(headers, widths), *(_line(row, widths) for row in cells)]
    return "\n".join(lines)


def _cell(text: str) -> str:
    flat = " ".join(text.split())
    if len(flat) > MAX_CELL_WIDTH:
        return flat[: MAX_CELL_WIDTH - 1] + "…"
    return flat


def _line(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=False)
