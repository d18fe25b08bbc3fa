"""`python -m service`: run the gRPC server in the foreground."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from service.access.bootstrap import bootstrap_admin_key
from service.config import load_settings
from service.event_loop import loop_factory
from service.observability.logs import configure_logging


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except (ValueError, OSError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        configure_logging(settings.log_level, settings.log_format)
        new_loop = loop_factory(settings.event_loop)
    except ValueError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        bootstrapped = bootstrap_admin_key(settings, os.environ)
    except (ValueError, OSError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if bootstrapped is not None:
        logging.getLogger("service.access.bootstrap").info(bootstrapped.message)
    from service.server import serve  # after logging is set up, so import-time warnings are formatted

    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
