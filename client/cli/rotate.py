"""`fastproxy keys rotate KEY`: replaces a key in the live policy in three steps, each a
revision the Center makes (`RotateKey`: the new key's material never leaves it), and each
waited on until every connected node runs it (`ListNodes`: current), so no call fails:

1. the new key is added beside the old one (accepted, not yet used);
2. the new key is used, the old one still accepted;
3. the old key is retired: it is in no snapshot any more.

A NACK or a wait that runs out stops the rotation between two steps, with nothing
half-done; `--resume` goes on from where it stopped.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastproxy.cli import format as cli_format
from fastproxy.policy.keygen import KEY_TYPE_NAMES
from fastproxy.v1 import center_pb2

if TYPE_CHECKING:
    from fastproxy.cli.commands import CenterClient

EXIT_OK = 0
POLL_S = 0.2
DEFAULT_WAIT_S = 120.0
STEP_OF = {"added": 1, "in_use": 2, "done": 3}


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def describe(phase: str, key: str, successor: str) -> str:
    return {
        "not_started": f"{key} in use; no rotation under way",
        "added": f"{successor} added beside {key} (accepted, not yet used)",
        "in_use": f"{successor} in use, {key} still accepted",
        "done": f"{key} retired: {successor} replaced it",
    }.get(phase, phase)


def run_keys_rotate(args: argparse.Namespace) -> int:
    from fastproxy.cli.commands import CliError, center_client

    if args.wait <= 0:
        raise CliError("--wait must be greater than 0")
    done: list[dict[str, Any]] = []
    with center_client(args) as center:
        state = center.rotate(args.key, advance=False)
        resume = f"run `fastproxy keys rotate {args.key} --resume` to go on"
        if state.phase == "done":
            _say(f"nothing to do: {describe(state.phase, state.key, state.successor)}")
            return EXIT_OK
        if state.phase != "not_started":
            if not args.resume:
                raise CliError(f"a rotation of {args.key} is under way (step "
                               f"{STEP_OF[state.phase]}/3 applied: "
                               f"{describe(state.phase, state.key, state.successor)}); "
                               "run again with --resume to go on")
            _say(f"resuming: {describe(state.phase, state.key, state.successor)}")
            wait_current(center, center.nodes().latest_revision, args.wait,
                         STEP_OF[state.phase], resume)
        else:
            _say(f"rotating {args.key} -> {state.successor}")
        phase = state.phase
        while phase != "done":
            step = center.rotate(args.key, args.type or "", advance=True)
            applied = step.applied
            number = STEP_OF[step.phase]
            if applied.errors:
                raise CliError(f"the Center refused step {number}/3 "
                               f"({len(applied.errors)} errors):", applied.errors)
            revision = applied.revision.revision
            _say(f"step {number}/3: {describe(step.phase, step.key, step.successor)}: "
                 f"revision {revision}")
            wait_current(center, revision, args.wait, number, resume)
            done.append({"step": number, "phase": step.phase, "revision": revision})
            phase = step.phase
    _say(f"done: {args.key} is in no node's snapshot")
    if args.json:
        _say(cli_format.to_json({"key": args.key, "steps": done}))
    return EXIT_OK


def wait_current(center: CenterClient, revision: int, limit_s: float, step: int,
                 resume: str, clock: Callable[[], float] = time.monotonic) -> None:
    """Until every connected node runs the latest content for it; CliError naming the nodes
    on a NACK of `revision` or later, or when `limit_s` runs out."""
    from fastproxy.cli.commands import CliError

    deadline = clock() + limit_s
    shown = ""
    while True:
        nodes = center.nodes().nodes
        nacked = [n for n in nodes if n.nacked_revision >= revision]
        if nacked:
            first = nacked[0]
            raise CliError(f"step {step}/3: node {first.node_id} ({first.service}) NACKed "
                           f"revision {first.nacked_revision}: {first.nack_error}; nothing "
                           f"more was changed; {resume}")
        current = sum(1 for n in nodes if n.current)
        progress = f"  nodes current: {current}/{len(nodes)}"
        if progress != shown:
            _say(progress + ("" if nodes else " (no node connected)"))
            shown = progress
        if current == len(nodes):
            return
        if clock() > deadline:
            behind = ", ".join(f"{n.node_id} ({n.service})" for n in _behind(nodes))
            raise CliError(f"step {step}/3: only {current}/{len(nodes)} nodes run revision "
                           f"{revision} after {limit_s:g} s (behind: {behind}); nothing more "
                           f"was changed; {resume}")
        time.sleep(POLL_S)


def _behind(nodes: Any) -> list[center_pb2.NodeStatus]:
    return [n for n in nodes if not n.current]


def add_keys_rotate_command(keys: Any, add_command: Callable[..., argparse.ArgumentParser]
                            ) -> None:
    rotate = add_command(keys, "rotate", run_keys_rotate,
                         "replace a key in the live policy in three steps (added and "
                         "accepted, used, old one retired), each waited on until every "
                         "connected node runs it; no call fails")
    rotate.add_argument("key", metavar="KEY_NAME", help="the key to replace")
    rotate.add_argument("--type", choices=KEY_TYPE_NAMES, metavar="TYPE",
                        help="the new key's type (default: the old one's; a signing key "
                             "stays a signing key)")
    rotate.add_argument("--resume", action="store_true",
                        help="go on with a rotation that stopped between two steps")
    rotate.add_argument("--wait", type=float, default=DEFAULT_WAIT_S, metavar="SECONDS",
                        help="how long each step may take to reach every node (default "
                             "%(default)g)")
