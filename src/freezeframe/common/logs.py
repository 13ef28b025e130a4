"""Logging with the request id on every line: readable text (the default) or JSON lines.

``--log-format json`` (``server.log_format``) writes one JSON object per line, for a log
shipper to index without parsing::

    {"time": "2026-12-01T13:08:52.123Z", "level": "INFO", "logger": "freezeframe.images.data",
     "message": "...", "request_id": "req-...", "workflow_id": "..."}

``request_id`` is always there ("-" outside a request); ``workflow_id`` only on the lines a
workflow's run writes (the conductor sets it, ``context.workflow_id_var``); ``exception`` holds
the traceback of a line logged with one.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys

from freezeframe.common.context import request_id_var, workflow_id_var

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
FORMATS = ("text", "json")


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.workflow_id = workflow_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in a message are escaped by JSON)."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds")
                    .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id_var.get(),
        }
        workflow_id = getattr(record, "workflow_id", None) or workflow_id_var.get()
        if workflow_id:
            doc["workflow_id"] = workflow_id
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def setup(level: str = "info", fmt: str = "text") -> None:
    """Log to stderr at ``level``, as ``fmt``: "text" (unchanged) or "json" (one object a line)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(FORMAT))
    if fmt == "json":       # Python's warnings too, as lines of the logger "py.warnings"
        logging.captureWarnings(True)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own access log duplicates ours (ours has the request id).
    logging.getLogger("uvicorn.access").handlers[:] = []
    logging.getLogger("uvicorn.access").propagate = False
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
