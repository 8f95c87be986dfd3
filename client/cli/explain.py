"""`fastproxy explain`: what the callee would decide for one call, and why, asked of the
Center (which answers with the callee's own decision code, `fastproxy.policy.explain`).

Exit codes: 0 when the call would pass (allowed, or let through by audit mode), 3 when it
would be refused (denied, or no service serves the method), 1 on an error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from fastproxy.cli import format as cli_format
from fastproxy.v1 import center_pb2

EXIT_PASSES = 0
EXIT_REFUSED = 3
PASSING = ("allowed", "would_deny")


def run_explain(args: argparse.Namespace) -> int:
    from fastproxy.cli.commands import center_client

    with center_client(args) as center:
        answer = center.explain(args.caller, args.method, args.revision)
    text = cli_format.to_json(explanation_row(answer)) if args.json else explanation_text(answer)
    sys.stdout.write(text + "\n")
    return EXIT_PASSES if answer.verdict in PASSING else EXIT_REFUSED


def explanation_row(answer: center_pb2.ExplainResponse) -> dict[str, Any]:
    row: dict[str, Any] = {
        "revision": answer.revision, "caller": answer.caller, "method": answer.method,
        "callee": answer.callee, "verdict": answer.verdict, "rule": answer.rule,
        "detail": answer.detail,
    }
    if answer.audit:
        row["audit"] = answer.audit
    if answer.callee:
        row.update({
            "rate_limit": ({"rps": answer.rate_limit_rps, "burst": answer.rate_limit_burst}
                           if answer.rate_limited else None),
            "timeout_ms": answer.timeout_ms or None,
            "encryption": answer.encryption or None,
            "compression": answer.compression or None,
            "endpoints": [{"address": e.address,
                           "source": "registered" if e.registered else "static"}
                          for e in answer.endpoints],
        })
    return row


def explanation_text(answer: center_pb2.ExplainResponse) -> str:
    verdicts = {"allowed": "ALLOWED", "would_deny": "ALLOWED IN AUDIT MODE (would be denied)",
                "denied": "DENIED", "no_route": "NO ROUTE"}
    lines = [f"{answer.caller} -> {answer.method}  (policy revision {answer.revision})",
             f"  decision:     {verdicts.get(answer.verdict, answer.verdict)}",
             f"  why:          {answer.detail}"]
    if answer.callee:
        lines.insert(1, f"  callee:       {answer.callee}")
        lines.append(f"  rule:         {answer.rule}")
        if answer.audit:
            lines.append(f"  audit mode:   {answer.audit}")
        limit = (f"{answer.rate_limit_rps:g}/s, burst {answer.rate_limit_burst}"
                 if answer.rate_limited else "none")
        endpoints = ", ".join(f"{e.address} ({'registered' if e.registered else 'static'})"
                              for e in answer.endpoints) or "none"
        lines += [f"  rate limit:   {limit}",
                  f"  timeout cap:  {f'{answer.timeout_ms} ms' if answer.timeout_ms else 'none'}",
                  f"  encryption:   {answer.encryption or 'none (authenticated only)'}",
                  f"  compression:  {answer.compression or 'none'}",
                  f"  endpoints:    {endpoints}"]
    return "\n".join(lines)


def add_explain_command(subparsers: Any, add_command: Callable[..., argparse.ArgumentParser]
                        ) -> None:
    parser = add_command(subparsers, "explain", run_explain,
                         "what the callee would decide for a call, and why: the deciding "
                         "rule, rate limit, timeout cap, encryption, compression and "
                         "endpoints (exit 0: it passes, 3: it is refused, 1: error)")
    parser.add_argument("--caller", required=True, metavar="SERVICE",
                        help="the calling service")
    parser.add_argument("--method", required=True, metavar="/pkg.Service/Method")
    parser.add_argument("--revision", type=int, default=0, metavar="N",
                        help="the revision to ask about (default: the latest)")
