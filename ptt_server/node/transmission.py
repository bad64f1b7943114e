"""One transmission on one talkgroup, with one owner.

A grant (3GPP TS 24.380: the floor is "taken") becomes a `Transmission` owned by the node's
`TransmissionTable`. It owns the router's gate, the recording handle and the holder's entry, and
`close(reason)` ends all three together. `close` is idempotent and the first reason wins: a
session that closes for `server_stopped` ledgers exactly that, even when the floor's own
`Idle(disconnected)` event (published by the same release) reaches this node a moment later.
Nobody else writes these fields: sessions ask the table, they do not hold grants themselves.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from ptt_server.core import red as rfc2198
from ptt_server.core.model import EndReason
from ptt_server.media.policer import Policer


class Gate(Protocol):
    """The part of a talkgroup router a transmission opens and closes."""

    def open(self, session: str, transmission_id: str) -> None: ...

    def close(self, transmission_id: str | None = None) -> bool: ...


class Recording(Protocol):
    """The part of a recording handle a transmission drives."""

    def packet(self, payload: bytes, rtp_ts: int, seq: int, arrival: float,
               recovered: bool = False) -> None: ...

    def finish(self, reason: EndReason, ended_at: float) -> None: ...


@dataclass(frozen=True, slots=True)
class Request:
    """What a local session asked for when it requested a floor: the talkgroup it named (a
    patched floor grants others too) and the all-call it belongs to, if any."""

    session: str
    talkgroup: str
    linked_id: str | None = None


@dataclass(eq=False)
class Transmission:
    talkgroup: str
    transmission_id: str
    session: str  # the holder's session id (local to this node)
    expires_at: float  # the transmit limit (TS 24.380 timer T2), wall clock
    emergency: bool
    gate: Gate | None
    recording: Recording | None
    warned: bool = False
    refused_refreshes: int = 0  # lease refreshes Redis refused in a row (node/loops.py)
    # When the holder's lease in Redis was last written (monotonic; node/loops.py): the
    # node's lease refresher sets it. It starts when this node learns of the grant, a moment
    # after Redis wrote it, well within the margin the hold leaves before the lease lapses.
    lease_written: float = field(default_factory=time.monotonic)
    # How much this holder may send (media/policer.py): its own buckets, fresh at each grant.
    policer: Policer = field(default_factory=Policer, repr=False)
    close_reason: EndReason | None = field(default=None, init=False)
    # The newest packet recorded (sequence number, RTP timestamp): a gap before the next is
    # what RED's redundancy may fill.
    _top: tuple[int, int] | None = field(default=None, init=False, repr=False)
    _on_closed: Callable[[Transmission], None] | None = field(default=None, repr=False)

    @property
    def closed(self) -> bool:
        return self.close_reason is not None

    def packet(self, payload: bytes, rtp_ts: int, seq: int, arrival: float,
               red: rfc2198.RedPayload | None = None) -> None:
        """One forwarded packet to the recording: Opus, or RED whose primary is recorded and
        whose redundancy fills in packets lost just before it (core/red.py `recover`)."""
        recording = self.recording
        if self.close_reason is not None or recording is None:
            return
        top = self._top
        ahead = 1 if top is None else (seq - top[0]) % rfc2198.SEQ_MOD
        if ahead < rfc2198.SEQ_MOD // 2:  # the newest yet (a late one is recorded as it is)
            if top is not None and ahead > 1 and red is not None:
                for s, ts, frame in rfc2198.recover(red, seq, rtp_ts, ahead - 1, top[1]):
                    recording.packet(frame, ts, s, arrival, True)
            self._top = (seq, rtp_ts)
        recording.packet(payload if red is None else red.primary, rtp_ts, seq, arrival)

    def refused(self, seq: int, rtp_ts: int) -> None:
        """The talker's packet `seq` came but was refused (malformed): the recording has no
        gap to fill there from the next packet's redundancy."""
        top = self._top
        if top is None or 0 < (seq - top[0]) % rfc2198.SEQ_MOD < rfc2198.SEQ_MOD // 2:
            self._top = (seq, rtp_ts)

    def close(self, reason: EndReason, at: float | None = None) -> bool:
        """End the transmission: gate closed, recording finished with `reason`, entry gone.
        False (and nothing changes) if it had already ended, whatever the reason then."""
        if self.close_reason is not None:
            return False
        self.close_reason = reason
        if self.gate is not None:
            self.gate.close(self.transmission_id)
        if self.recording is not None:
            self.recording.finish(reason, time.time() if at is None else at)
        if self._on_closed is not None:
            self._on_closed(self)
        return True


class TransmissionTable:
    """The node's transmissions by (transmission id, talkgroup): a patched or all-call
    transmission is one entry per talkgroup, linked by the transmission id."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, str], Transmission] = {}
        self._by_session: dict[str, dict[str, Transmission]] = {}  # session -> talkgroup -> tx
        self._requests: dict[str, Request] = {}  # transmission id -> what was asked for

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self) -> Iterator[Transmission]:
        return iter(list(self._by_key.values()))

    # -- requests ---------------------------------------------------------------------------
    def requested(self, transmission_id: str, request: Request) -> None:
        self._requests[transmission_id] = request

    def request(self, transmission_id: str) -> Request | None:
        return self._requests.get(transmission_id)

    def forget_request(self, transmission_id: str) -> None:
        self._requests.pop(transmission_id, None)

    # -- transmissions ----------------------------------------------------------------------
    def get(self, transmission_id: str, talkgroup: str) -> Transmission | None:
        return self._by_key.get((transmission_id, talkgroup))

    def add(self, tx: Transmission) -> Transmission:
        """Register a new transmission; an existing one for the same key is kept (a grant
        handled on the direct path and again from pub/sub is one transmission)."""
        key = (tx.transmission_id, tx.talkgroup)
        existing = self._by_key.get(key)
        if existing is not None:
            return existing
        tx._on_closed = self._remove
        self._by_key[key] = tx
        self._by_session.setdefault(tx.session, {})[tx.talkgroup] = tx
        if tx.gate is not None:
            tx.gate.open(tx.session, tx.transmission_id)
        return tx

    def of_session(self, session: str) -> dict[str, Transmission]:
        """talkgroup -> transmission, for the talkgroups this session holds (do not mutate)."""
        return self._by_session.get(session, {})

    def holds(self, session: str, talkgroup: str) -> bool:
        return talkgroup in self._by_session.get(session, {})

    def end(self, transmission_id: str, talkgroup: str, reason: EndReason) -> bool:
        tx = self._by_key.get((transmission_id, talkgroup))
        return tx is not None and tx.close(reason)

    def end_session(
        self, session: str, reason: EndReason, talkgroup: str | None = None
    ) -> list[Transmission]:
        """End what a session holds (on one talkgroup, or all); the ended ones."""
        held = self._by_session.get(session, {})
        ended = [tx for tg, tx in list(held.items()) if talkgroup is None or tg == talkgroup]
        for tx in ended:
            tx.close(reason)
        # Requests never granted (denied, or expired in the queue) are forgotten with them.
        for tid, request in list(self._requests.items()):
            if request.session == session and talkgroup in (None, request.talkgroup):
                del self._requests[tid]
        return ended

    def end_all(self, reason: EndReason) -> int:
        count = 0
        for tx in list(self._by_key.values()):
            count += tx.close(reason)
        self._requests.clear()
        return count

    def _remove(self, tx: Transmission) -> None:
        self._by_key.pop((tx.transmission_id, tx.talkgroup), None)
        held = self._by_session.get(tx.session)
        if held is not None and held.get(tx.talkgroup) is tx:
            del held[tx.talkgroup]
            if not held:
                del self._by_session[tx.session]
