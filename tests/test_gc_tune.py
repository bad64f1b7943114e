"""The server's garbage-collection settings (app/serve.py tune_gc), in a fresh interpreter so
this test process keeps its own."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import gc, json, sys
from ptt_server.app.serve import GcPauses, tune_gc
tune_gc(sys.argv[1])
pauses = GcPauses()
gc.collect()
print(json.dumps({"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count(),
                  "full": pauses.count[2]}))
"""


def probe(mode: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         timeout=60, check=True)
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_quiet_freezes_start_up_objects_and_spaces_full_collections() -> None:
    got = probe("quiet")
    assert got["threshold"] == [700, 10, 1000]
    assert isinstance(got["frozen"], int) and got["frozen"] > 1000  # modules and their objects
    assert got["full"] == 1  # the pause counter saw the explicit full collection


def test_default_keeps_cpython_behaviour() -> None:
    got = probe("default")
    assert got["frozen"] == 0 and got["threshold"][1:] == [10, 10]  # type: ignore[index]
