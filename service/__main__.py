"""`python -m service`: run the gRPC server in the foreground."""

from __future__ import annotations

import asyncio
import logging
import sys

from service.config import load_settings


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except (ValueError, OSError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from service.server import serve  # after logging is set up, so import-time warnings are formatted

    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
