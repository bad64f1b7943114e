"""Audit recording: every transmission to an Ogg Opus file, a hash-chained ledger, an index.

See docs/recording.md. The media path uses `Recorder`; the HTTP API and CLI use
`RecordingStore`.
"""

from __future__ import annotations

from ptt_server.recording.handle import RecordingHandle
from ptt_server.recording.ledger import Ledger, LedgerEntry
from ptt_server.recording.meta import TransmissionMeta
from ptt_server.recording.recorder import Recorder
from ptt_server.recording.recovery import INCOMPLETE

__all__ = ["INCOMPLETE", "Ledger", "LedgerEntry", "Recorder", "RecordingHandle",
           "TransmissionMeta"]
