"""`python -m center_svc`: the FastProxy control plane."""

from __future__ import annotations

import asyncio
import sys

from center_svc.config import PROG, parse_config
from center_svc.server import StartupError, serve
from fastproxy.telemetry.logs import configure_logging
from fastproxy.telemetry.setup import TelemetryConfigError, configure_telemetry


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    configure_logging(config.log_level, config.log_format)
    try:
        configure_telemetry("fastproxy-center", metrics_port=config.metrics_port,
                            metrics_host=config.listen.rpartition(":")[0].strip("[]"))
    except (TelemetryConfigError, OSError) as exc:
        sys.stderr.write(f"{PROG}: error: telemetry: {exc}\n")
        return 1
    try:
        asyncio.run(serve(config))
    except StartupError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
