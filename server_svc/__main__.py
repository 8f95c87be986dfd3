"""`python -m server_svc`: the demo services host (see --help)."""

from __future__ import annotations

import sys

from fastproxy.hosting.service_main import run_service
from fastproxy.telemetry.setup import configure_telemetry
from server_svc.app import StartupError, serve
from server_svc.config import PROG, parse_config


def main(argv: list[str] | None = None) -> int:
    config = parse_config(sys.argv[1:] if argv is None else argv)
    return run_service(
        PROG, log_level=config.log_level, log_format=config.log_format,
        serve=lambda: serve(config), startup_errors=(StartupError,),
        telemetry=lambda: configure_telemetry(
            "fastproxy-server", metrics_port=config.metrics_port,
            metrics_host=config.listen.rpartition(":")[0].strip("[]")))


if __name__ == "__main__":
    sys.exit(main())
