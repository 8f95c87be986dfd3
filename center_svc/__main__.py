"""`python -m center_svc`: the FastProxy control plane."""

from __future__ import annotations

import asyncio
import logging
import sys

from center_svc.config import PROG, parse_config
from center_svc.server import StartupError, serve


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    logging.basicConfig(level=config.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(config))
    except StartupError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
