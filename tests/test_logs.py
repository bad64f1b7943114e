"""Logging: the line formats, a writer thread that a stuck stderr cannot turn into a stuck event
loop, and the throttle for operations that fail over and over."""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ptt_server.app import logs
from ptt_server.core.logthrottle import FailureLog, describe


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    logs.stop_logging(2.0)
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


class BlockedStream(io.StringIO):
    """A stream whose write waits until `release` is set: stderr that nobody reads."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Event()

    def write(self, text: str) -> int:
        self.entered.set()
        assert self.release.wait(30), "the test never released the stream"
        return super().write(text)


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "log-writer"]


# -- formats -----------------------------------------------------------------------------------
def test_json_logs(capsys: pytest.CaptureFixture[str], restore_logging: None) -> None:
    logs.setup_logging("json", node_id="node-7")
    log = logging.getLogger("ptt.test")
    fields = {"unit": "u12", "msg": "clash", "p": Path("/x")}
    log.info("hello %s", "world", extra={"fields": fields})
    log.debug("hidden")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    assert logs.stop_logging(5.0)
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    # One object per line; other loggers (a background task of an earlier test still
    # finishing) may write too, so the test's own records are picked by logger.
    lines = [json.dumps(r) for r in records if r["logger"] == "ptt.test"]
    first = json.loads(lines[0])
    assert first["level"] == "INFO" and first["logger"] == "ptt.test"
    assert first["msg"] == "hello world" and first["node"] == "node-7"
    assert first["unit"] == "u12" and first["field_msg"] == "clash" and first["p"] == "/x"
    assert first["ts"].endswith("Z") and len(first["ts"]) == len("2024-01-01T00:00:00.000Z")
    second = json.loads(lines[1])
    assert second["level"] == "ERROR" and "RuntimeError: boom" in second["exc"]
    assert second["msg"] == "failed"  # the traceback in `exc` only, not folded into msg
    assert len(lines) == 2  # one object per line, DEBUG filtered


def test_text_logs(capsys: pytest.CaptureFixture[str], restore_logging: None) -> None:
    logs.setup_logging("text", level="DEBUG")
    logs.setup_logging("text", level="DEBUG")  # again: still one handler
    logging.getLogger("ptt.test").debug("plain", extra={"fields": {"talkgroup": "north"}})
    assert logs.stop_logging(5.0)
    [line] = capsys.readouterr().err.splitlines()
    assert "DEBUG ptt.test: plain talkgroup=north" in line
    with pytest.raises(ValueError):
        logs.setup_logging("xml")


def test_json_lines_stay_valid_with_tracebacks(restore_logging: None) -> None:
    out = io.StringIO()
    logs.setup_logging("json", stream=out)
    log = logging.getLogger("ptt.test")
    args = ["before"]
    fields = {"attempt": 1}
    for i in range(50):
        try:
            raise ValueError(f"bad value {i}\nsecond line \"quoted\"")
        except ValueError:
            log.exception("step %d failed: %s", i, args, extra={"fields": fields})
    # Rendered when logged, in the caller: later changes to the objects do not leak in.
    args.append("after")
    fields["attempt"] = 2
    assert logs.stop_logging(5.0)
    lines = out.getvalue().splitlines()
    assert len(lines) == 50
    for i, line in enumerate(lines):
        entry = json.loads(line)
        assert entry["msg"] == f"step {i} failed: ['before']" and entry["attempt"] == 1
        assert entry["exc"].startswith("Traceback (most recent call last):")
        assert entry["exc"].count("Traceback") == 1  # rendered once
        assert f"ValueError: bad value {i}\nsecond line \"quoted\"" in entry["exc"]


# -- a stuck stream ----------------------------------------------------------------------------
def test_blocked_stream_does_not_block_the_caller(restore_logging: None) -> None:
    stream = BlockedStream()
    logs.setup_logging("json", stream=stream, queue_size=100)
    log = logging.getLogger("ptt.test")
    dropped_before = logs.dropped_records()
    log.error("first")
    assert stream.entered.wait(5)  # the writer is now stuck inside write()
    started = time.monotonic()
    for i in range(10_000):
        log.error("record %d", i)
    assert time.monotonic() - started < 2.0
    dropped = logs.dropped_records() - dropped_before
    assert dropped == 10_000 - 100  # the queue holds 100; every other record is counted
    stream.release.set()
    assert logs.stop_logging(10.0)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["msg"] for e in lines[:2]] == ["first", "record 0"]
    assert len(lines) == 1 + 100 + 1
    report = lines[-1]
    assert report["msg"] == f"{dropped} log records dropped" and report["dropped"] == dropped
    assert report["level"] == "WARNING"


def test_stop_is_bounded_when_the_stream_is_blocked(restore_logging: None) -> None:
    stream = BlockedStream()
    logs.setup_logging("json", stream=stream)
    logging.getLogger("ptt.test").error("stuck")
    assert stream.entered.wait(5)
    started = time.monotonic()
    assert logs.stop_logging(0.3) is False
    assert time.monotonic() - started < 1.5
    dropped_before = logs.dropped_records()
    logging.getLogger("ptt.test").error("after stop")  # discarded and counted, not queued
    assert logs.dropped_records() == dropped_before + 1
    assert all(t.daemon for t in _writer_threads())  # cannot keep the process alive
    stream.release.set()
    for thread in _writer_threads():
        thread.join(5)
    assert not _writer_threads()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["msg"] for e in lines] == ["stuck", "1 log records dropped"]


def test_a_pipe_nobody_reads(restore_logging: None) -> None:
    """A real file descriptor (stderr is one) filled up: the writer blocks in os.write."""
    read_fd, write_fd = os.pipe()
    pipe = open(write_fd, "w")  # closed below, once the writer has let go of it
    try:
        logs.setup_logging("text", stream=pipe, queue_size=1_000)
        log = logging.getLogger("ptt.test")
        started = time.monotonic()
        for i in range(10_000):  # ~1 MB: far beyond what a pipe buffers
            log.error("record %d %s", i, "x" * 100)
        assert time.monotonic() - started < 2.0
        started = time.monotonic()
        assert logs.stop_logging(0.3) is False
        assert time.monotonic() - started < 1.5
    finally:
        os.close(read_fd)  # the writer's os.write now fails (EPIPE): it drains and ends
        for thread in _writer_threads():
            thread.join(10)
        assert not _writer_threads()
        pipe.close()


# -- the throttle ------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]

    def tracebacks(self) -> int:
        return sum(1 for r in self.records if r.exc_info)


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, Records]]:
    logger = logging.getLogger("ptt.test.throttle")
    handler = Records()
    logger.addHandler(handler)
    logger.propagate = False
    yield logger, handler
    logger.removeHandler(handler)
    logger.propagate = True


def _fail(failures: FailureLog, exc: Exception) -> None:
    try:
        raise exc
    except Exception:
        failures.failure()


def test_throttle_1000_failures_one_traceback_one_summary(
    captured: tuple[logging.Logger, Records],
) -> None:
    logger, records = captured
    clock = Clock()
    failures = FailureLog(logger, "node ticker", interval_s=10.0, clock=clock)
    for i in range(1_000):  # 0.011 s apart: 11 s, one interval and a bit
        _fail(failures, ConnectionError(f"redis down (attempt {i})"))
        clock.now += 0.011
    assert records.tracebacks() == 1
    assert len(records.records) == 2
    first, summary = records.records
    assert first.getMessage() == "node ticker failed" and first.levelno == logging.ERROR
    assert first.exc_info and isinstance(first.exc_info[1], ConnectionError)
    # The summary comes with the first failure at or past the 10 s mark.
    more = summary.__dict__["fields"]["more"]
    assert 900 <= more <= 910
    assert summary.getMessage() == (
        f"node ticker failed {more} more times in 10 s "
        f"(last error: ConnectionError: redis down (attempt {more}))"
    )
    assert failures.failures == failures.total == 1_000
    failures.success()
    assert records.messages()[-1] == (
        "node ticker recovered after 1000 failures (last error: ConnectionError: redis down "
        "(attempt 999))"
    )
    assert not failures.failing


def test_throttle_without_successes_is_bounded_per_interval(
    captured: tuple[logging.Logger, Records],
) -> None:
    logger, records = captured
    clock = Clock()
    failures = FailureLog(logger, "message handling", interval_s=10.0, clock=clock)
    for _ in range(1_000):  # 125 s of failures, 8 per second
        _fail(failures, RuntimeError("bug"))
        clock.now += 0.125
    assert records.tracebacks() == 1
    assert len(records.records) == 1 + 12  # then a summary per interval
    failures.flush()
    assert len(records.records) == 14
    assert sum(r.__dict__["fields"].get("more", 0) for r in records.records) == 999


def test_throttle_flapping_does_not_flood(captured: tuple[logging.Logger, Records]) -> None:
    logger, records = captured
    clock = Clock()
    failures = FailureLog(logger, "media publisher", interval_s=10.0, clock=clock)
    for _ in range(50):  # fail, succeed, fail... within one interval
        _fail(failures, OSError("send failed"))
        failures.success()
        clock.now += 0.1
    assert records.messages() == [
        "media publisher failed", "media publisher recovered after 1 failures"]
    clock.now += 10
    failures.success()  # the flaps counted meanwhile are not lost
    assert records.messages()[-1] == (
        "media publisher failed 49 more times in 15 s (last error: OSError: send failed)"
    )
    assert records.tracebacks() == 1


def test_throttle_new_kind_and_quiet_failures_get_tracebacks(
    captured: tuple[logging.Logger, Records],
) -> None:
    logger, records = captured
    clock = Clock()
    failures = FailureLog(logger, "listener", interval_s=10.0, clock=clock)
    _fail(failures, ConnectionError("down"))
    _fail(failures, ConnectionError("down"))  # counted
    _fail(failures, KeyError("bad event"))  # another fault: its own traceback
    assert records.tracebacks() == 2
    clock.now += 10
    _fail(failures, ConnectionError("down"))  # the interval is over: the summary
    assert records.messages()[-1].startswith("listener failed 2 more times")
    failures.success()
    clock.now += 60
    _fail(failures, ConnectionError("down again"))  # a fresh failure after a quiet spell
    assert records.tracebacks() == 3
    assert records.records[-1].__dict__["fields"] == {"failures": 1}


def test_describe_is_one_bounded_line() -> None:
    assert describe(ValueError("a\n  b")) == "ValueError: a b"
    assert describe(TimeoutError()) == "TimeoutError"
    assert describe(None) == "unknown"
    assert len(describe(RuntimeError("x" * 1000))) == 300


def test_throttle_through_the_queue_writes_valid_json(restore_logging: None) -> None:
    out = io.StringIO()
    logs.setup_logging("json", stream=out)
    clock = Clock()
    failures = FailureLog(logging.getLogger("ptt.node"), "node ticker", clock=clock)
    for _ in range(300):  # a ticker every 0.25 s, 75 s of outage
        _fail(failures, ConnectionError("Error 111 connecting to localhost:6379"))
        clock.now += 0.25
    failures.success()
    assert logs.stop_logging(5.0)
    entries = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["msg"].split(" (")[0] for e in entries] == (
        ["node ticker failed"] + ["node ticker failed 40 more times in 10 s"] * 7
        + ["node ticker recovered after 300 failures"]
    )
    assert "ConnectionError: Error 111" in entries[0]["exc"]
    assert entries[-1]["failures"] == 300 and entries[-1]["level"] == "WARNING"
