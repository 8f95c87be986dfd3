"""`python -m server_svc`: the demo services host (see --help)."""

from __future__ import annotations

import asyncio
import logging
import sys

from server_svc.app import StartupError, serve
from server_svc.config import PROG, parse_config


def main(argv: list[str] | None = None) -> int:
    config = parse_config(sys.argv[1:] if argv is None else argv)
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
