"""The deployment's canned statuses ("on scene", "need backup"): `<data_dir>/statuses.json`.

A list of `{"id", "labels": {"en", "id"}, "urgent"}` (core/messaging.py checks it); without the
file the defaults of core/messaging.py apply. Read again whenever the file changes, like the
directory: an agency edits its list without restarting the radio. A file that does not pass
the checks is logged and the last good list is kept, so one typo cannot take the status
buttons off every phone.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from ptt_server.core.messaging import DEFAULT_STATUSES, StatusDef, parse_statuses

log = logging.getLogger("ptt.statuses")

FILENAME = "statuses.json"
MAX_BYTES = 64 * 1024


class StatusCatalogue:
    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / FILENAME
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None  # (mtime_ns, size) of what was loaded
        self._statuses = DEFAULT_STATUSES

    def all(self) -> tuple[StatusDef, ...]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return DEFAULT_STATUSES
        except OSError as exc:
            log.error("cannot read %s: %s", self.path, exc)
            return self._statuses
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if stamp != self._stamp:
                self._stamp = stamp
                self._load(st.st_size)
            return self._statuses

    def get(self, status_id: str) -> StatusDef | None:
        return next((s for s in self.all() if s.id == status_id), None)

    def _load(self, size: int) -> None:
        try:
            if size > MAX_BYTES:
                raise ValueError(f"larger than {MAX_BYTES} bytes")
            self._statuses = parse_statuses(json.loads(self.path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError too
            log.error("%s is not a valid status list (%s); keeping the previous one",
                      self.path, exc)


_catalogues: dict[Path, StatusCatalogue] = {}
_catalogues_lock = threading.Lock()


def catalogue(data_dir: Path) -> StatusCatalogue:
    """One catalogue per data directory and process (the file is stat'ed on each use)."""
    key = Path(data_dir).resolve()
    with _catalogues_lock:
        found = _catalogues.get(key)
        if found is None:
            found = _catalogues[key] = StatusCatalogue(key)
        return found
