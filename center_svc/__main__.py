"""`python -m center_svc`: the FastProxy control plane."""

from __future__ import annotations

import sys

from center_svc.config import PROG, parse_config
from center_svc.server import StartupError, serve
from fastproxy.hosting.service_main import run_service
from fastproxy.telemetry.setup import configure_telemetry


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    return run_service(
        PROG, log_level=config.log_level, log_format=config.log_format,
        serve=lambda: serve(config), startup_errors=(StartupError,),
        telemetry=lambda: configure_telemetry(
            "fastproxy-center", metrics_port=config.metrics_port,
            metrics_host=config.listen.rpartition(":")[0].strip("[]")))


if __name__ == "__main__":
    sys.exit(main())
