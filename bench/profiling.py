"""Where the server's time goes: py-spy samples the server process during a transmission.

py-spy reads the Python stacks of another process (root, or ptrace permission, needed); time
spent in C (SRTP encryption, sendto) is charged to the Python line that called it. With
--nonblocking the server is not paused while sampled.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def start(pid: int, duration_s: float, out: Path, rate: int = 250, native: bool = False,
          ) -> subprocess.Popen[bytes] | None:
    exe = py_spy()
    if exe is None:
        return None
    args = [exe, "record", "--pid", str(pid), "--rate", str(rate), "--duration",
            str(max(1, int(duration_s))), "--format", "raw", "--output", str(out),
            "--nonblocking", "--threads"]
    if native:
        args.append("--native")
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


@dataclass
class Profile:
    samples: int = 0  # all threads
    main_samples: int = 0  # the event loop's thread
    threads: list[tuple[str, float]] = field(default_factory=list)  # (thread, % of samples)
    self_time: list[tuple[str, float]] = field(default_factory=list)  # (line, % of main)
    inclusive: list[tuple[str, float]] = field(default_factory=list)  # (function, % of main)
    error: str = ""


LOOP_ROOT = "Runner.run (asyncio/runners.py)"
LOOP_LABEL = "[event loop: uvloop's own C code, I/O and callback dispatch]"


def _short(frame: str, line: bool = False) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "/ptt_server/", "/lib/python3.11/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "/ptt_server/":
                path = "ptt_server/" + path
            break
    where = f"{path}:{m.group('line')}" if line and m.group("line") else path
    return f"{m.group('func')} ({where})"


def parse(path: Path, top: int = 15) -> Profile:
    """Collapsed stacks ("thread (id): name;frame;...;frame count" per line, from
    `py-spy record --threads --format raw`) -> the event loop thread's top lines by own time
    and top functions by total time, below the event loop's entry point."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    samples = main = 0
    for text in path.read_text(errors="replace").splitlines():
        stack, _, count = text.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread = "?"
        if frames and frames[0].startswith("thread ("):
            thread = frames.pop(0).split(":", 1)[-1].strip() or "?"
        frames = [f for f in frames if f and not f.startswith("process ")]
        samples += n
        threads[thread] += n
        if thread != "MainThread" or not frames:
            continue
        main += n
        short = [_short(f) for f in frames]
        if LOOP_ROOT in short:  # drop the entry point: runpy, cli, serve, uvloop.run
            cut = short.index(LOOP_ROOT)
            leaf_is_root = cut == len(short) - 1
            frames, short = frames[cut + 1:], short[cut + 1:]
            if leaf_is_root:
                own[LOOP_LABEL] += n
                continue
        own[_short(frames[-1], line=True)] += n
        for f in set(short):
            total[f] += n
    prof = Profile(samples=samples, main_samples=main)
    if samples:
        prof.threads = [(t, 100.0 * c / samples) for t, c in threads.most_common(6)]
    if main:
        prof.self_time = [(f, 100.0 * c / main) for f, c in own.most_common(top)]
        prof.inclusive = [(f, 100.0 * c / main) for f, c in total.most_common(top)]
    return prof


def finish(proc: subprocess.Popen[bytes] | None, out: Path, timeout: float = 60.0) -> Profile:
    if proc is None:
        return Profile(error="py-spy is not installed")
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    if not out.exists():
        return Profile(error=(err or b"").decode(errors="replace").strip()[-300:] or "no output")
    return parse(out)
