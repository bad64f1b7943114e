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


def start(pid: int, duration_s: float, out: Path, rate: int = 250,
          ) -> subprocess.Popen[bytes] | None:
    exe = py_spy()
    if exe is None:
        return None
    return subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--rate", str(rate), "--duration",
         str(max(1, int(duration_s))), "--format", "raw", "--output", str(out), "--nonblocking"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@dataclass
class Profile:
    samples: int = 0
    self_time: list[tuple[str, float]] = field(default_factory=list)  # (function, % samples)
    inclusive: list[tuple[str, float]] = field(default_factory=list)
    error: str = ""


def _short(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "/ptt_server/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "/ptt_server/":
                path = "ptt_server/" + path
            break
    return f"{m.group('func')} ({path})"


def parse(path: Path, top: int = 15) -> Profile:
    """Collapsed stacks ("a;b;c count" per line) -> top functions by own and total time."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";") if f and not f.startswith("process ")
                  and not f.startswith("thread ")]
        if not frames:
            continue
        samples += n
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    prof = Profile(samples=samples)
    if samples:
        prof.self_time = [(f, 100.0 * c / samples) for f, c in own.most_common(top)]
        prof.inclusive = [(f, 100.0 * c / samples) for f, c in total.most_common(top * 2)]
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
