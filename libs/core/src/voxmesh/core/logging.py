"""Structured logging: one JSON object per line, with the session id of the
current task (a contextvar) so one conversation can be followed across services."""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import time

session_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("session_id", default=None)

_STD_ATTRS = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(time.time(), 3),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        sid = session_id_var.get()
        if sid:
            out["session_id"] = sid
        for key, value in record.__dict__.items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(service: str, level: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or os.environ.get("VOXMESH_LOG_LEVEL", "INFO")).upper())
    # aioice/aiortc are chatty at INFO about every candidate pair.
    for noisy in ("aioice", "aiortc", "grpc", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
