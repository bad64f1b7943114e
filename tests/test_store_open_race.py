"""Several processes opening a fresh recording index at the same moment (the workers of one
server, or nodes on a shared store starting together) all get it: none fails with SQLite's
"database is locked" while another is turning WAL on."""

from __future__ import annotations

import multiprocessing
import sys
from pathlib import Path

PROCESSES = 8
ROUNDS = 12


def _open(data_dir: str, start: object, out: object) -> None:
    from ptt_server.recording.store import RecordingStore

    start.wait(10)  # type: ignore[attr-defined]
    try:
        store = RecordingStore(Path(data_dir))
        for _ in range(20):  # and straight to work, as a node does: catching up with the ledger
            store.refresh()
        out.put("ok")  # type: ignore[attr-defined]
    except Exception as exc:  # reported to the test, which names it
        out.put(f"{type(exc).__name__}: {exc}")  # type: ignore[attr-defined]


def test_processes_opening_a_fresh_index_together_all_succeed(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")  # no inherited SQLite or lock state
    results: list[str] = []
    for round_ in range(ROUNDS):
        data = tmp_path / f"data{round_}"
        start, out = ctx.Barrier(PROCESSES), ctx.Queue()
        procs = [ctx.Process(target=_open, args=(str(data), start, out))
                 for _ in range(PROCESSES)]
        for p in procs:
            p.start()
        results += [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(30)
            assert p.exitcode == 0, (p.exitcode, sys.platform)
    assert [r for r in results if r != "ok"] == []
    assert len(results) == PROCESSES * ROUNDS
