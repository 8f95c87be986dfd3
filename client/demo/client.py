"""`python -m fastproxy.demo.client --out-proxy HOST:PORT`: the demo's calls through an
out-proxy (a plain gRPC channel: the app has no FastProxy code). Exit 0 when every call had
the expected outcome. The client container of docker/compose.yaml runs this."""

from __future__ import annotations

import argparse
import sys

import grpc

from fastproxy.demo.scenario import Outcome, Report, catalog_calls, every_kind
from fastproxy.demo.stack import wait_serving
from fastproxy.hosting.commandline import OneLineArgumentParser, host_port


def _show(outcome: Outcome) -> None:
    mark = "ok " if outcome.expected else "!! "
    print(f"{mark}{outcome.what:<36} {outcome.code.name:<18} {outcome.summary}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(prog="fastproxy.demo.client", description=__doc__)
    parser.add_argument("--out-proxy", type=host_port, required=True,
                        help="the out-proxy's HOST:PORT")
    parser.add_argument("--wait", type=float, default=30.0, metavar="SECONDS",
                        help="how long to wait for the out-proxy to be ready")
    args: argparse.Namespace = parser.parse_args(argv)
    if not wait_serving(args.out_proxy, args.wait, lambda: True):
        print(f"fastproxy.demo.client: error: {args.out_proxy} not serving after "
              f"{args.wait:g} s", file=sys.stderr)
        return 1
    report = Report()
    with grpc.insecure_channel(args.out_proxy) as channel:
        every_kind(report, "sidecar", channel, _show)
        catalog_calls(report, "sidecar", channel, _show)
    print(f"{len(report.outcomes)} calls, {len(report.outcomes) - len(report.refused())} "
          f"answered, {sum(report.refused().values())} refused, "
          f"{sum(not o.expected for o in report.outcomes)} unexpected")
    return 0 if report.all_expected else 1


if __name__ == "__main__":
    sys.exit(main())
