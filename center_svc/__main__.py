"""`python -m center_svc`: the FastProxy control plane."""

from __future__ import annotations

import sys

from center_svc.config import PROG, parse_config
from center_svc.server import StartupError, serve
from fastproxy.hosting.service_main import run_service, telemetry_for


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    return run_service(
        PROG, log_level=config.log_level, log_format=config.log_format,
        serve=lambda telemetry: serve(config, telemetry), startup_errors=(StartupError,),
        telemetry=telemetry_for("fastproxy-center", config.listen, config.metrics_port))


if __name__ == "__main__":
    sys.exit(main())
