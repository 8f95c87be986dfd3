"""`python -m server_svc`: the demo services host (see --help)."""

from __future__ import annotations

import sys

from fastproxy.hosting.service_main import run_service, telemetry_for
from server_svc.app import StartupError, serve
from server_svc.config import PROG, parse_config


def main(argv: list[str] | None = None) -> int:
    config = parse_config(sys.argv[1:] if argv is None else argv)
    return run_service(
        PROG, log_level=config.node.log_level, log_format=config.node.log_format,
        serve=lambda telemetry: serve(config, telemetry), startup_errors=(StartupError,),
        telemetry=telemetry_for("fastproxy-server", config.node.listen, config.node.metrics_port))


if __name__ == "__main__":
    sys.exit(main())
