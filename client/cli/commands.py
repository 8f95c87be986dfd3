"""`fastproxy`: the operator console for the Center.

    fastproxy policy apply FILE [-m COMMENT]     fastproxy policy get [--revision N]
    fastproxy policy history [--audit]           fastproxy policy rollback N [-m COMMENT]
    fastproxy nodes                              fastproxy keys gen TYPE [--name NAME]
    fastproxy explain --caller S --method /p.S/M [--revision N]
    fastproxy policy apply --dry-run FILE        fastproxy policy diff [FILE | --revision N]
    fastproxy keys rotate KEY [--type T] [--resume]
    fastproxy center key [--pem] [-o FILE]
    fastproxy certs gen DIR [--center HOSTS] [--node S[ROLES]] [--proxy S@HOSTS] ...

Each subcommand is one `add_*_command(subparsers)` function listed in `COMMANDS`; it builds
its parser with `add_command` (or `add_command_group`), which sets `run` to a function of the
parsed arguments that returns the exit code.
Failures raise `CliError`; `main` prints them to stderr, one clear line each, and exits 1.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

# gRPC's C core prints a failed TLS handshake to stderr itself (at error level), lines beside
# our one. It reads its verbosity once, when grpc is first imported, so this must come before
# that import (and `fastproxy/__init__.py` must not import grpc for it to take effect).
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import grpc

from fastproxy import __version__
from fastproxy.cli import format as cli_format
from fastproxy.hosting.commandline import OneLineArgumentParser, host_port
from fastproxy.node.credentials import (
    CenterCredentials,
    CredentialError,
    check_center_connection,
    why_unreachable,
)
from fastproxy.policy.keygen import KEY_TYPE_NAMES, generate_key
from fastproxy.policy.model import KeyType
from fastproxy.policy.signing import public_key_pem
from fastproxy.v1 import center_pb2, center_pb2_grpc

DEFAULT_CENTER = "127.0.0.1:7070"
DEFAULT_TIMEOUT_SECONDS = 5.0
CENTER_KEY_BYTES = 32
EXIT_OK = 0
EXIT_FAILURE = 1

Subparsers = Any  # argparse's subparsers action has no public type
Run = Callable[[argparse.Namespace], int]
Response = TypeVar("Response")


class CliError(Exception):
    """A failure to report: the first line says what went wrong; `details` (the errors of a
    refused policy) follow one per line."""

    def __init__(self, message: str, details: Sequence[str] = (),
                 code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = tuple(details)
        self.code = code  # the Center's status, when the failure is its answer


# --- talking to the Center ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CenterTarget:
    """Where the Center is and how to prove who we are to it."""

    address: str
    token: str = field(default="", repr=False)
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_server_name: str = ""
    timeout: float = DEFAULT_TIMEOUT_SECONDS

    @property
    def uses_tls(self) -> bool:
        return bool(self.tls_ca or self.tls_cert or self.tls_key or self.tls_server_name)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return CenterCredentials(token=self.token).metadata

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> CenterTarget:
        if bool(args.tls_cert) != bool(args.tls_key):
            raise CliError("--tls-cert and --tls-key must be given together")
        timeout = args.timeout if args.timeout is not None else _env_timeout()
        if timeout <= 0:
            raise CliError("--timeout must be greater than 0")
        return cls(
            address=args.center, token=args.token or "",
            tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
            tls_server_name=args.tls_server_name or "", timeout=timeout,
        )


def _env_timeout() -> float:
    raw = os.environ.get(ENV["timeout"], "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_SECONDS
    try:
        return float(raw)
    except ValueError:
        raise CliError(f"{ENV['timeout']}={raw!r}: expected a number of seconds") from None


def open_channel(target: CenterTarget) -> grpc.Channel:
    """A channel to the Center: plaintext unless a TLS option is given."""
    try:
        credentials = CenterCredentials.from_files(
            token=target.token,
            tls_ca=str(target.tls_ca) if target.tls_ca else None,
            tls_cert=str(target.tls_cert) if target.tls_cert else None,
            tls_key=str(target.tls_key) if target.tls_key else None,
            tls_server_name=target.tls_server_name,
        )
        check_center_connection(target.address, uses_tls=credentials.uses_tls,
                                pinned_key=None, node=False)
    except CredentialError as exc:
        raise CliError(str(exc)) from None
    return credentials.channel(target.address)


class CenterClient:
    """The admin RPCs, each with the credential and the deadline of `target`; gRPC failures
    come out as `CliError` with a line an operator can act on."""

    def __init__(self, target: CenterTarget, channel: grpc.Channel) -> None:
        self._target = target
        self._stub = center_pb2_grpc.CenterStub(channel)

    def apply(self, yaml_text: str, comment: str, *, refuse_removals: bool = False
              ) -> center_pb2.ApplyPolicyResponse:
        request = center_pb2.ApplyPolicyRequest(yaml=yaml_text, comment=comment,
                                                refuse_removals=refuse_removals)
        return self._call(self._stub.ApplyPolicy, request)

    def get(self, revision: int, show_secrets: bool = False) -> center_pb2.GetPolicyResponse:
        request = center_pb2.GetPolicyRequest(revision=revision, show_secrets=show_secrets)
        return self._call(self._stub.GetPolicy, request)

    def info(self) -> center_pb2.GetCenterInfoResponse:
        return self._call(self._stub.GetCenterInfo, center_pb2.GetCenterInfoRequest())

    def history(self, limit: int) -> center_pb2.ListRevisionsResponse:
        request = center_pb2.ListRevisionsRequest(limit=limit)
        return self._call(self._stub.ListRevisions, request)

    def audit(self, limit: int) -> center_pb2.ListAuditEventsResponse:
        request = center_pb2.ListAuditEventsRequest(limit=limit)
        return self._call(self._stub.ListAuditEvents, request)

    def rollback(self, revision: int, comment: str) -> center_pb2.ApplyPolicyResponse:
        request = center_pb2.RollbackPolicyRequest(revision=revision, comment=comment)
        return self._call(self._stub.RollbackPolicy, request)

    def nodes(self) -> center_pb2.ListNodesResponse:
        return self._call(self._stub.ListNodes, center_pb2.ListNodesRequest())

    def preview(self, yaml_text: str = "", revision: int = 0
                ) -> center_pb2.PreviewPolicyResponse:
        request = center_pb2.PreviewPolicyRequest(yaml=yaml_text, revision=revision)
        return self._call(self._stub.PreviewPolicy, request)

    def rotate(self, key: str, new_type: str = "", *, advance: bool
               ) -> center_pb2.RotateKeyResponse:
        request = center_pb2.RotateKeyRequest(key=key, new_type=new_type, advance=advance)
        return self._call(self._stub.RotateKey, request)

    def explain(self, caller: str, method: str, revision: int) -> center_pb2.ExplainResponse:
        request = center_pb2.ExplainRequest(caller=caller, method=method, revision=revision)
        return self._call(self._stub.Explain, request)

    def _call(self, method: Callable[..., Response], request: object) -> Response:
        try:
            return method(request, timeout=self._target.timeout, metadata=self._target.metadata)
        except grpc.RpcError as exc:
            raise rpc_failure(exc, self._target) from None


def rpc_failure(error: grpc.RpcError, target: CenterTarget) -> CliError:
    """One line naming what the operator should look at: the address, the credential, or
    the request."""
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = " ".join(str(error.details() if isinstance(error, grpc.Call) else error).split())
    where = f"the Center at {target.address}"
    if code is grpc.StatusCode.UNAVAILABLE:
        why = why_unreachable(details, uses_tls=target.uses_tls,
                              has_certificate=target.tls_cert is not None)
        if why is not None:
            return CliError(f"cannot reach {where}: {why.reason} (gRPC: {details})", code=code)
        return CliError(f"cannot reach {where}: {details}", code=code)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return CliError(f"{where} did not answer within {target.timeout:g} s "
                        "(is it running? see --timeout)", code=code)
    if code is grpc.StatusCode.UNAUTHENTICATED:
        hint = ""
        if not (target.token or target.tls_cert):
            hint = f" (no --token or client certificate; {ENV['token']} is not set)"
            if os.environ.get("FASTPROXY_TOKEN"):
                hint = (f" (no --token: FASTPROXY_TOKEN is a node's token, the CLI reads "
                        f"{ENV['token']})")
        return CliError(f"{where} refused the credential: unauthenticated{hint}: {details}",
                        code=code)
    if code is grpc.StatusCode.PERMISSION_DENIED:
        return CliError(f"{where} refused the credential: permission denied: {details}",
                        code=code)
    if code is grpc.StatusCode.NOT_FOUND:
        return CliError(details, code=code)
    return CliError(f"{where} answered {code.name}: {details}", code=code)


@contextmanager
def center_client(args: argparse.Namespace) -> Iterator[CenterClient]:
    target = CenterTarget.from_args(args)
    channel = open_channel(target)
    try:
        yield CenterClient(target, channel)
    finally:
        channel.close()


# --- commands -------------------------------------------------------------------------------


def _print(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def _applied_line(verb: str, response: center_pb2.ApplyPolicyResponse) -> str:
    info = response.revision
    comment = f" ({info.comment})" if info.comment else ""
    return (f"{verb}: revision {info.revision}, hash "
            f"{cli_format.short_hash(info.content_hash)}{comment}")


def _finish_apply(args: argparse.Namespace, response: center_pb2.ApplyPolicyResponse,
                  verb: str, unchanged_subject: str) -> int:
    if args.json:
        _print(cli_format.to_json(cli_format.apply_result(response)))
    if response.errors:
        count = len(response.errors)
        raise CliError(f"the Center refused the policy ({count} "
                       f"error{'s' if count != 1 else ''}):", response.errors)
    if args.json:
        return EXIT_OK
    if response.applied:
        _print(_applied_line(verb, response))
    else:
        _print(f"nothing changed: {unchanged_subject} is identical to the latest revision "
               f"{response.revision.revision}")
    return EXIT_OK


def read_policy_file(name: str) -> str:
    path = Path(name)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CliError(f"policy file {path} not found") from None
    except IsADirectoryError:
        raise CliError(f"policy file {path} is a directory") from None
    except OSError as exc:
        raise CliError(f"cannot read policy file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CliError(f"policy file {path} is not UTF-8 text") from None


def run_policy_apply(args: argparse.Namespace) -> int:
    from fastproxy.cli import preview

    yaml_text = read_policy_file(args.file)
    with center_client(args) as center:
        if args.dry_run:
            return preview.show(args, center.preview(yaml_text), applies=True)
        response = center.apply(yaml_text, args.message, refuse_removals=not args.yes)
        if not response.applied and response.removed_services_with_nodes:
            preview.confirm_removals(list(response.removed_services_with_nodes))
            response = center.apply(yaml_text, args.message)
    return _finish_apply(args, response, "applied", "the policy")


def run_policy_diff(args: argparse.Namespace) -> int:
    from fastproxy.cli import preview

    yaml_text = read_policy_file(args.file) if args.file else ""
    with center_client(args) as center:
        return preview.show(args, center.preview(yaml_text, args.revision or 0), applies=False)


def run_policy_get(args: argparse.Namespace) -> int:
    try:
        with center_client(args) as center:
            response = center.get(args.revision, show_secrets=args.show_secrets)
    except CliError as exc:
        if exc.code is grpc.StatusCode.NOT_FOUND:
            raise CliError(f"revision {args.revision} does not exist" if args.revision
                           else "the Center holds no policy yet") from None
        raise
    if args.json:
        _print(cli_format.to_json({"revision": cli_format.revision_row(response.revision),
                                   "yaml": response.yaml}))
    else:
        sys.stdout.write(response.yaml)
        if response.yaml and not response.yaml.endswith("\n"):
            sys.stdout.write("\n")
    return EXIT_OK


def run_policy_history(args: argparse.Namespace) -> int:
    """Revisions, then the audit events (who applied, rolled back or was refused). `--json`
    keeps its list of revisions for scripts; `--audit` lists only the audit events."""
    with center_client(args) as center:
        if args.audit:
            events = center.audit(args.limit).events
            _print(cli_format.to_json([cli_format.audit_row(e) for e in events]) if args.json
                   else cli_format.audit_table(events))
            return EXIT_OK
        response = center.history(args.limit)
        if args.json:
            _print(cli_format.to_json([cli_format.revision_row(r) for r in response.revisions]))
            return EXIT_OK
        try:
            audit: str = cli_format.audit_table(center.audit(args.limit).events)
        except CliError as exc:
            if exc.code is not grpc.StatusCode.UNIMPLEMENTED:
                raise
            audit = "this Center keeps no audit events"
    _print(f"{cli_format.history_table(response.revisions)}\n\n"
           f"{cli_format.AUDIT_TITLE}\n{audit}")
    return EXIT_OK


def run_policy_rollback(args: argparse.Namespace) -> int:
    with center_client(args) as center:
        response = center.rollback(args.revision, args.message)
    return _finish_apply(args, response, f"rolled back to revision {args.revision}",
                         f"revision {args.revision}")


def run_nodes(args: argparse.Namespace) -> int:
    with center_client(args) as center:
        response = center.nodes()
    if args.json:
        _print(cli_format.to_json({
            "latest_revision": response.latest_revision,
            "nodes": [cli_format.node_row(n) for n in response.nodes],
        }))
    else:
        _print(cli_format.nodes_table(response))
    return EXIT_OK


def run_center_key(args: argparse.Namespace) -> int:
    """The Center's snapshot-signing public key, as `--center-public-key` takes it."""
    with center_client(args) as center:
        info = center.info()
    key = bytes(info.public_key)
    if len(key) != CENTER_KEY_BYTES:
        raise CliError(f"the Center at {args.center} sent no valid public key")
    encoded = base64.b64encode(key).decode("ascii")
    text = public_key_pem(key) if args.pem else encoded + "\n"
    if args.output is not None:
        try:
            Path(args.output).write_text(text, encoding="ascii")
        except OSError as exc:
            raise CliError(f"cannot write {args.output}: {exc.strerror}") from None
        text = f"wrote the Center's public key to {args.output} (for --center-public-key)\n"
    if args.json:
        text = cli_format.to_json({"public_key": encoded,
                                   "latest_revision": info.latest_revision,
                                   "development_mode": info.development_mode}) + "\n"
    sys.stdout.write(text)
    return EXIT_OK


def run_keys_gen(args: argparse.Namespace) -> int:
    try:
        key = generate_key(KeyType(args.type), args.name)
    except ValueError as exc:
        raise CliError(f"--name: {exc}") from None
    _print(cli_format.to_json(key.as_json()) if args.json else key.policy_entry())
    return EXIT_OK


# --- the command line -------------------------------------------------------------------------


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("revisions start at 1")
    return value


# Every Center connection option has its variable. Those that say who the operator is
# (token, client certificate) are the admin's own: a node's FASTPROXY_TOKEN left in a shell
# must not become the CLI's credential, nor an admin's the SDK's.
ENV = {
    "center": "FASTPROXY_CENTER",
    "token": "FASTPROXY_ADMIN_TOKEN",
    "tls_ca": "FASTPROXY_TLS_CA",
    "tls_cert": "FASTPROXY_ADMIN_TLS_CERT",
    "tls_key": "FASTPROXY_ADMIN_TLS_KEY",
    "tls_server_name": "FASTPROXY_TLS_SERVER_NAME",
    "timeout": "FASTPROXY_TIMEOUT",
}


def _env(option: str) -> str | None:
    return os.environ.get(ENV[option]) or None


def center_options() -> argparse.ArgumentParser:
    """Options of every command that talks to the Center (a parent parser)."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("Center connection")
    group.add_argument("--center", metavar="HOST:PORT", type=host_port,
                       default=_env("center") or DEFAULT_CENTER,
                       help=f"the Center's address (env {ENV['center']}; default "
                            "%(default)s). Off loopback the CLI only speaks TLS")
    group.add_argument("--token", default=_env("token"),
                       help="admin token, sent as 'authorization: Bearer TOKEN' "
                            f"(env {ENV['token']}; FASTPROXY_TOKEN is a node's)")
    group.add_argument("--tls-ca", type=Path, metavar="FILE", default=_env("tls_ca"),
                       help=f"CA bundle that verifies the Center (implies TLS; env "
                            f"{ENV['tls_ca']})")
    group.add_argument("--tls-cert", type=Path, metavar="FILE", default=_env("tls_cert"),
                       help=f"admin client certificate (with --tls-key; implies TLS; env "
                            f"{ENV['tls_cert']})")
    group.add_argument("--tls-key", type=Path, metavar="FILE", default=_env("tls_key"),
                       help=f"private key of the client certificate (env {ENV['tls_key']})")
    group.add_argument("--tls-server-name", metavar="NAME", default=_env("tls_server_name"),
                       help="name expected in the Center's certificate (implies TLS; env "
                            f"{ENV['tls_server_name']})")
    group.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                       help=f"give up on the Center after this long (env {ENV['timeout']}; "
                            f"default {DEFAULT_TIMEOUT_SECONDS:g})")
    parent.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parent


def add_command(subparsers: Subparsers, name: str, run: Run, help_text: str,
                *, talks_to_center: bool = True) -> argparse.ArgumentParser:
    """A subcommand that calls `run(args)` for its exit code; `talks_to_center` gives it
    --center, the credential options, --timeout and --json."""
    parents = [center_options()] if talks_to_center else []
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, help=help_text, description=help_text, parents=parents)
    parser.set_defaults(run=run)
    return parser


def add_command_group(subparsers: Subparsers, name: str, help_text: str) -> Subparsers:
    """A subcommand with subcommands of its own (`policy apply`); returns their subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(name, help=help_text,
                                                            description=help_text)
    return parser.add_subparsers(title="commands", metavar="COMMAND", required=True)


def add_policy_commands(subparsers: Subparsers) -> None:
    policy = add_command_group(subparsers, "policy",
                               "apply, read, list and roll back policy revisions")

    apply = add_command(policy, "apply", run_policy_apply,
                        "apply a policy file as a new revision")
    apply.add_argument("file", metavar="FILE", help="the policy YAML")
    apply.add_argument("-m", "--message", default="", metavar="COMMENT",
                       help="comment stored with the revision")
    apply.add_argument("--dry-run", action="store_true",
                       help="apply nothing: validate, show the changes (secrets redacted) and "
                            "the connected nodes that would get a new snapshot")
    apply.add_argument("--yes", "--force", dest="yes", action="store_true",
                       help="apply even when the policy removes services that have connected "
                            "nodes (otherwise asked on a terminal, refused without one)")

    diff = add_command(policy, "diff", run_policy_diff,
                       "what applying FILE (or going back to revision N) would change, from "
                       "the latest revision: the diff (secrets redacted) and the nodes that "
                       "would get a new snapshot")
    target = diff.add_mutually_exclusive_group(required=True)
    target.add_argument("file", metavar="FILE", nargs="?", help="a policy YAML")
    target.add_argument("--revision", type=_positive_int, metavar="N",
                        help="a stored revision instead of a file")

    get = add_command(policy, "get", run_policy_get,
                      "print a revision's YAML as applied (the latest by default), inline "
                      "secret values shown as <redacted>; the document can be edited and "
                      "applied back as is (<redacted> keeps the stored value)")
    get.add_argument("--revision", type=_non_negative_int, default=0, metavar="N")
    get.add_argument("--show-secrets", action="store_true",
                     help="print secret values too (an admin with the read-secrets role)")

    history = add_command(policy, "history", run_policy_history,
                          "list the revisions, then who applied, rolled back or was refused "
                          "each change")
    history.add_argument("--limit", type=_non_negative_int, default=0, metavar="N",
                         help="at most N revisions and N audit events (default: all)")
    history.add_argument("--audit", action="store_true",
                         help="only the audit events: changes, refusals and denied admin "
                              "calls, each with its actor (with --json: a list of them)")

    rollback = add_command(policy, "rollback", run_policy_rollback,
                           "make a new revision with the content of revision N")
    rollback.add_argument("revision", type=_positive_int, metavar="N")
    rollback.add_argument("-m", "--message", default="", metavar="COMMENT",
                          help="comment stored with the new revision")


def add_nodes_command(subparsers: Subparsers) -> None:
    add_command(subparsers, "nodes", run_nodes,
                "list connected nodes and the revision each one runs")


def add_center_commands(subparsers: Subparsers) -> None:
    center = add_command_group(subparsers, "center", "ask the Center about itself")
    key = add_command(center, "key", run_center_key,
                      "print the Center's snapshot-signing public key, the value nodes pin "
                      "with --center-public-key (fetch it over TLS or on loopback)")
    key.add_argument("--pem", action="store_true",
                     help="print it as a PEM public key (the default is base64)")
    key.add_argument("-o", "--output", metavar="FILE",
                     help="write it to FILE instead of printing it")


def add_keys_commands(subparsers: Subparsers) -> None:
    keys = add_command_group(subparsers, "keys",
                             "make key material for a policy, rotate a key of the live policy")
    gen = add_command(keys, "gen", run_keys_gen,
                      "print a fresh key entry to paste under 'keys:' of a policy "
                      "(this prints secret material)", talks_to_center=False)
    gen.add_argument("type", metavar="TYPE", choices=KEY_TYPE_NAMES,
                     help=f"one of {', '.join(KEY_TYPE_NAMES)}")
    gen.add_argument("--name", metavar="NAME",
                     help="the key's name in the policy (default: TYPE-YYYYMMDD)")
    gen.add_argument("--json", action="store_true", help="print JSON instead of YAML")

    from fastproxy.cli.rotate import add_keys_rotate_command
    add_keys_rotate_command(keys, add_command)


def add_health(subparsers: Subparsers) -> None:
    from fastproxy.cli.health import add_health_command

    add_health_command(subparsers)


def add_explain(subparsers: Subparsers) -> None:
    from fastproxy.cli.explain import add_explain_command

    add_explain_command(subparsers, add_command)


def add_certs(subparsers: Subparsers) -> None:
    from fastproxy.cli.certs import add_certs_command

    add_certs_command(subparsers, add_command, add_command_group)


def add_demo(subparsers: Subparsers) -> None:
    from fastproxy.demo import add_demo_command

    add_demo_command(subparsers, add_command)


# A new subcommand is one more `add_*_command(subparsers)` here.
COMMANDS: list[Callable[[Subparsers], None]] = [
    add_policy_commands,
    add_nodes_command,
    add_center_commands,
    add_keys_commands,
    add_explain,
    add_health,
    add_certs,
    add_demo,
]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="fastproxy",
                     description="Operate a FastProxy Center: policies, nodes and keys.")
    parser.add_argument("--version", action="version", version=f"fastproxy {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True,
                                       parser_class=OneLineArgumentParser)
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Run = args.run
    try:
        return run(args)
    except CliError as exc:
        print(f"fastproxy: {exc.message}", file=sys.stderr)
        for line in exc.details:
            print(f"  {line}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("fastproxy: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
