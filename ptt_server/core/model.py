"""Domain types shared by every layer: roles, talkgroups, users, transmission end reasons.

Plain data only: no I/O here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Role(enum.StrEnum):
    OFFICER = "officer"
    SUPERVISOR = "supervisor"
    DISPATCHER = "dispatcher"
    AUDITOR = "auditor"
    ADMIN = "admin"
    # Another system of the command centre (the 110/112 emergency line, CCTV, a dispatch
    # system): it uses the incident API with a service token and never joins a talkgroup.
    INTEGRATION = "integration"


class TalkgroupKind(enum.StrEnum):
    NORMAL = "normal"
    COMMAND = "command"
    # Opened for one incident through the incident API (service/incident_api.py) and removed
    # when it is closed; its recordings and messages stay in the ledger.
    INCIDENT = "incident"


class EndReason(enum.StrEnum):
    """Why a transmission (or a session) ended; written into the audit record."""

    RELEASED = "released"
    TIMEOUT = "timeout"
    REVOKED = "revoked"
    PREEMPTED = "preempted"
    DISCONNECTED = "disconnected"
    SERVER_STOPPED = "server_stopped"
    LEFT = "left"
    # Redis lost the floor state (restarted empty, or out of reach too long): the talker's
    # own node ended the transmission before anyone else could be granted the floor.
    SERVICE_INTERRUPTED = "service_interrupted"
    # A talker flooding far beyond what any Opus encoder sends (media/policer.py) is cut off.
    POLICED = "policed"


# Default floor priority per role (0..255, higher wins; 3GPP TS 24.380 uses an 8-bit priority).
ROLE_PRIORITY: dict[Role, int] = {
    Role.OFFICER: 100,
    Role.SUPERVISOR: 150,
    Role.DISPATCHER: 150,
    Role.ADMIN: 150,
    Role.AUDITOR: 0,
    Role.INTEGRATION: 0,
}


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role
    talkgroups: tuple[str, ...]
    alias: str
    priority: int


@dataclass(frozen=True, slots=True)
class TalkgroupInfo:
    id: str
    name: str
    kind: TalkgroupKind
    max_duration_s: float | None = None  # None: the server's default transmit limit


@dataclass(frozen=True)
class Claims:
    """Who a verified token says the caller is (identity/auth.py checks it; the service layer
    refreshes role and talkgroups from the directory before anything is authorised)."""

    sub: str
    role: Role
    talkgroups: tuple[str, ...]
    priority: int
    alias: str
    exp: int
    iss: str
    aud: str
