"""`python -m server_svc`: the demo services host (see --help)."""

from __future__ import annotations

import asyncio
import sys

from fastproxy.telemetry.logs import configure_logging
from fastproxy.telemetry.setup import TelemetryConfigError, configure_telemetry
from server_svc.app import StartupError, serve
from server_svc.config import PROG, parse_config


def main(argv: list[str] | None = None) -> int:
    config = parse_config(sys.argv[1:] if argv is None else argv)
    configure_logging(config.log_level, config.log_format)
    try:
        configure_telemetry("fastproxy-server", metrics_port=config.metrics_port,
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
