"""Logging: one JSON object per line on stderr (for collectors), or plain text for people.

Structured fields go in `extra={"fields": {...}}`, e.g.
`log.warning("join refused", extra={"fields": {"unit": "u12", "talkgroup": "north"}})`, so the
same call reads well in both formats and never clashes with LogRecord's own attributes.

Records are written by a thread of their own, never by the caller: a log call on the event
loop only puts the record in a bounded queue. A stderr that nobody reads (a full pipe) used to
block the loop inside the write, for long enough that SIGTERM went unhandled. Now a full queue
drops records instead, counts them, and says so ("N log records dropped") once it drains.
"""

from __future__ import annotations

import atexit
import copy
import datetime as dt
import json
import logging
import logging.handlers
import os
import queue
import re
import sys
import threading
import time
from typing import Any, TextIO

# Chatty libraries: their INFO lines are per-packet or per-candidate noise at our scale.
NOISY_LOGGERS = ("aioice", "aiortc", "aiohttp.access")
CORE_KEYS = ("ts", "level", "logger", "msg", "node")
# About 10 s of the worst flood measured (one traceback per failed message, ~500/s per node),
# a few MB of memory at most: enough to ride out a slow reader, small enough to stay bounded.
QUEUE_SIZE = 10_000
STOP_TIMEOUT_S = 2.0
# Under a sustained flood the queue may never drain; the drop count is still reported this often.
DROP_REPORT_S = 5.0

log = logging.getLogger("ptt.logs")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


def _timestamp(record: logging.LogRecord) -> str:
    when = dt.datetime.fromtimestamp(record.created, tz=dt.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _exc_text(formatter: logging.Formatter, record: logging.LogRecord) -> str | None:
    """The traceback: rendered by the queue handler already (exc_text), or now."""
    if record.exc_text:
        return record.exc_text
    if record.exc_info:
        return formatter.formatException(record.exc_info)
    return None


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
        exc = _exc_text(self, record)
        if exc is not None:
            entry["exc"] = exc
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: a field that JSON cannot hold (a Path, an enum) still logs, as text.
        return json.dumps(entry, default=str, ensure_ascii=False)


# Text lines carry what clients send (a user name at login, a talkgroup id): a newline in one
# would start a forged record, an ANSI escape would rewrite the operator's terminal. So in text
# format every record is one line: anything non-printable is escaped as Python writes it in a
# string literal, a field value that could pass for more fields is quoted, and the lines of a
# traceback are indented so that none of them can pass for a record either.
CONTINUATION = "  | "
_PLAIN_VALUE = re.compile(r'[^\s"=\\]+')


def escape_text(text: str) -> str:
    """`text` with every non-printable character (newlines, tabs, ESC, bidi controls, line
    separators) written as its backslash escape: \\n, \\x1b, \\u2028."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def text_value(value: object) -> str:
    """A field value for `key=value`: bare if it is one plain word, else quoted (backslash
    and double quote escaped), so `unit=x remote=10.0.0.1` cannot be forged from one value."""
    text = str(value)
    if _PLAIN_VALUE.fullmatch(text) and text.isprintable():
        return text
    return '"' + escape_text(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


class TextFormatter(logging.Formatter):
    def __init__(self, node_id: str | None = None) -> None:
        super().__init__()
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), record.levelname, escape_text(record.name) + ":",
                 escape_text(record.getMessage())]
        parts += [f"{escape_text(str(k))}={text_value(v)}" for k, v in _fields(record).items()]
        if self.node_id is not None:
            parts.append(f"node={text_value(self.node_id)}")
        line = " ".join(parts)
        exc = _exc_text(self, record)
        if exc is not None:
            line += _continuation(exc)
        if record.stack_info:
            line += _continuation(self.formatStack(record.stack_info))
        return line


def _continuation(text: str) -> str:
    return "".join("\n" + CONTINUATION + escape_text(part) for part in text.splitlines())


class _Drops:
    """Records lost because the queue was full (or logging was stopped), across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._unreported = 0
        self.total = 0

    def add(self) -> None:
        with self._lock:
            self._unreported += 1
            self.total += 1

    def take(self) -> int:
        with self._lock:
            n, self._unreported = self._unreported, 0
            return n


class _OurHandler(logging.handlers.QueueHandler):
    """The caller's side: render the record to plain strings and queue it, never wait.

    Marks the handler we installed, so that calling setup_logging again replaces it."""

    def __init__(self, q: queue.Queue[logging.LogRecord | None], drops: _Drops) -> None:
        super().__init__(q)
        self._q = q
        self.drops = drops
        self.accepting = True
        self._exc_formatter = logging.Formatter()

    def emit(self, record: logging.LogRecord) -> None:
        if not self.accepting or self._q.full():
            # Checked before prepare: under a flood, rendering a traceback only to drop it
            # would cost the event loop for nothing.
            self.drops.add()
            return
        super().emit(record)

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # Not QueueHandler.prepare: that formats the whole line here and folds the traceback
        # into `msg`, which would leave the JSON formatter no `exc` to put in its own field.
        # The message and the traceback are rendered here, in the caller, exactly once: the
        # writer thread then only sees strings, never the caller's live args or frames.
        record = copy.copy(record)  # other handlers (pytest's capture) see the original
        record.msg = record.message = record.getMessage()
        record.args = None
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self._exc_formatter.formatException(record.exc_info)
            record.exc_info = None
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.__dict__["fields"] = dict(fields)  # the caller may reuse its dict
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self._q.put_nowait(record)
        except queue.Full:
            # The default raises, and handleError then prints a traceback to the very stderr
            # that is not keeping up. Losing a record beats stalling the event loop.
            self.drops.add()


class _Writer:
    """The writing end, run by the listener thread only.

    Deliberately not a logging.Handler: logging.shutdown() at exit takes every handler's lock,
    and would hang on this one while its thread is stuck writing to a full pipe."""

    def __init__(self, stream: TextIO, formatter: logging.Formatter) -> None:
        self.stream = stream
        self.formatter = formatter
        self.encoding = getattr(stream, "encoding", None) or "utf-8"
        # A real file descriptor is written with os.write: a blocked write then holds no lock
        # of the stream object, so the interpreter can still flush sys.stderr and exit
        # (it would otherwise wait on the stream's lock, then abort).
        self.fd: int | None = None
        try:
            self.fd = stream.fileno()
            stream.flush()  # what was printed before goes out first
        except (AttributeError, OSError, ValueError):
            self.fd = None

    def handle(self, record: logging.LogRecord) -> None:
        try:
            text = self.formatter.format(record) + "\n"
            if self.fd is None:
                self.stream.write(text)
                self.stream.flush()
            else:
                data = memoryview(text.encode(self.encoding, "backslashreplace"))
                while data:
                    data = data[os.write(self.fd, data):]
        except Exception:
            pass  # nowhere left to report it: the stream is what failed


class _Listener(logging.handlers.QueueListener):
    def __init__(
        self, q: queue.Queue[logging.LogRecord | None], writer: _Writer, drops: _Drops
    ) -> None:
        super().__init__(q)
        self._q = q
        self.writer = writer
        self.drops = drops
        self._reported_at = time.monotonic()
        self._stopping = False

    def start(self) -> None:
        # daemon: a thread stuck on a blocked stderr must never keep the process alive.
        # _monitor is QueueListener's own loop (private in the stubs only).
        self._thread = threading.Thread(
            target=self._monitor, name="log-writer", daemon=True  # type: ignore[attr-defined]
        )
        self._thread.start()

    def handle(self, record: logging.LogRecord) -> None:
        if record is not _REPORT:
            self.writer.handle(record)
        if (record is _REPORT or self._q.empty()
                or time.monotonic() - self._reported_at >= DROP_REPORT_S):
            self._report_drops()
        if self._stopping and self._q.empty():
            # stop_within could not queue the sentinel (the queue was full): now that it has
            # drained, the thread ends itself instead of waiting on an abandoned queue forever.
            self._q.put_nowait(None)

    def _report_drops(self) -> None:
        self._reported_at = time.monotonic()
        n = self.drops.take()
        if n:
            self.writer.handle(log.makeRecord(
                log.name, logging.WARNING, __file__, 0, "%d log records dropped", (n,), None,
                extra={"fields": {"dropped": n}},
            ))

    def stop_within(self, timeout_s: float) -> bool:
        """QueueListener.stop, bounded: False if the writer did not finish in time."""
        thread = self._thread
        if thread is None:
            return True
        deadline = time.monotonic() + timeout_s
        self._stopping = True
        try:
            # Drops last reported, then the sentinel that ends the thread.
            for item in (_REPORT, None):
                self._q.put(item, timeout=max(0.0, deadline - time.monotonic()))
        except queue.Full:
            return False
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            return False
        self._thread = None
        return True


# Queued at stop: not written, it makes the writer report the drops it has not yet reported.
_REPORT = logging.makeLogRecord({"msg": "report drops"})


class _State:
    def __init__(self) -> None:
        self.handler: _OurHandler | None = None
        self.listener: _Listener | None = None
        self.drops = _Drops()
        self.atexit_registered = False


_state = _State()


def setup_logging(
    fmt: str = "json", level: str = "INFO", node_id: str | None = None, *,
    stream: TextIO | None = None, queue_size: int = QUEUE_SIZE,
) -> None:
    if fmt not in ("json", "text"):
        raise ValueError(f"unknown log format {fmt!r} (json or text)")
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    stop_logging(STOP_TIMEOUT_S)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _OurHandler):
            root.removeHandler(handler)
    # sys.stderr looked up now (not at import), so redirected stderr (tests, daemons) is used.
    formatter = JsonFormatter(node_id) if fmt == "json" else TextFormatter(node_id)
    writer = _Writer(sys.stderr if stream is None else stream, formatter)
    q: queue.Queue[logging.LogRecord | None] = queue.Queue(queue_size)
    _state.handler = _OurHandler(q, _state.drops)
    _state.listener = _Listener(q, writer, _state.drops)
    _state.listener.start()
    root.addHandler(_state.handler)
    root.setLevel(numeric)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
    if not _state.atexit_registered:
        # Runs before logging's own shutdown hook (registered earlier, so run later).
        atexit.register(stop_logging, STOP_TIMEOUT_S)
        _state.atexit_registered = True


def stop_logging(timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Write out what is queued and stop the writer thread, waiting at most `timeout_s`.

    Returns False if the stream did not take it all in time (the thread is abandoned; it is a
    daemon). Records logged afterwards are discarded and counted, never written by the caller:
    call setup_logging again to resume."""
    handler, listener = _state.handler, _state.listener
    if handler is not None:
        handler.accepting = False
    if listener is None:
        return True
    _state.listener = None
    return listener.stop_within(timeout_s)


def dropped_records() -> int:
    """Records lost since start-up (queue full, or logged after stop_logging): for health."""
    return _state.drops.total
