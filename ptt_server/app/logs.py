"""Logging: one JSON object per line on stderr (for collectors), or plain text for people.

Structured fields go in `extra={"fields": {...}}`, e.g.
`log.warning("join refused", extra={"fields": {"unit": "u12", "talkgroup": "north"}})`, so the
same call reads well in both formats and never clashes with LogRecord's own attributes.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any, TextIO

# Chatty libraries: their INFO lines are per-packet or per-candidate noise at our scale.
NOISY_LOGGERS = ("aioice", "aiortc", "aiohttp.access")
CORE_KEYS = ("ts", "level", "logger", "msg", "node")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


def _timestamp(record: logging.LogRecord) -> str:
    when = dt.datetime.fromtimestamp(record.created, tz=dt.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    def __init__(self, node_id: str | None = None) -> None:
        super().__init__()
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self.node_id is not None:
            entry["node"] = self.node_id
        for key, value in _fields(record).items():
            # The core keys stay trustworthy: a field may not overwrite them.
            entry[f"field_{key}" if key in CORE_KEYS else str(key)] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: a field that JSON cannot hold (a Path, an enum) still logs, as text.
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self, node_id: str | None = None) -> None:
        super().__init__()
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), record.levelname, record.name + ":", record.getMessage()]
        parts += [f"{k}={v}" for k, v in _fields(record).items()]
        if self.node_id is not None:
            parts.append(f"node={self.node_id}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class _OurHandler(logging.StreamHandler[TextIO]):
    """Marks the handler we installed, so that calling setup_logging again replaces it."""


def setup_logging(fmt: str = "json", level: str = "INFO", node_id: str | None = None) -> None:
    if fmt not in ("json", "text"):
        raise ValueError(f"unknown log format {fmt!r} (json or text)")
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _OurHandler):
            root.removeHandler(handler)
    # sys.stderr looked up now (not at import), so redirected stderr (tests, daemons) is used.
    handler = _OurHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(node_id) if fmt == "json" else TextFormatter(node_id))
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
