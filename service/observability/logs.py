"""Log set-up: `text` (default) or `json` lines on stderr, each with the request id of the call it belongs to.

The request id is the `x-request-id` Envoy forwards (the client's, or one Envoy generated), else one made by the
server; lines outside a call carry "-". What is logged is decided where it is logged: never input text, vectors,
API keys, authorization metadata or webhook secrets.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from service.observability.context import current_call

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


class RequestIdFilter(logging.Filter):
    """Stamps every record with the current call's request id (and RPC), read from the call's contextvar."""

    def filter(self, record: logging.LogRecord) -> bool:
        info = current_call()
        record.request_id = info.request_id if info is not None else "-"
        record.rpc = info.rpc if info is not None else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id (+ rpc, exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        rpc = getattr(record, "rpc", "")
        if rpc:
            entry["rpc"] = rpc
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, log_format: str = "text", stream=None) -> None:
    """Replace the root logger's handlers with one stderr handler in `log_format`."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format must be one of {LOG_FORMATS}, got {log_format!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
