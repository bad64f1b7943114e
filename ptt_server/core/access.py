"""Who may do what on which talkgroup: pure functions of verified claims and talkgroup data.

No I/O here, so the rules can be read and tested as a whole:

* officers join (and so monitor) only the talkgroups assigned to them;
* supervisors, dispatchers and admins join their own talkgroups plus any command talkgroup, and
  may monitor (listen only) every talkgroup, and revoke the floor / clear emergencies;
* auditors never join, listen live or transmit: they review recordings after the fact;
* integrations (the emergency line, CCTV) never join either: they open incident talkgroups,
  assign units and send alerts through the incident API, with a service token;
* text and status messages go to a talkgroup one may use, or to a unit (officers: a unit they
  share a talkgroup with, or the command centre);
* transmitting needs membership; a monitor is listen-only, except that supervisors and
  dispatchers may also talk on a talkgroup they monitor (control answers any unit it hears).
"""

from __future__ import annotations

from typing import Final, Literal

from ptt_server.core.model import Claims, Role, TalkgroupInfo, TalkgroupKind

MEMBER: Final = "member"
MONITOR: Final = "monitor"
Mode = Literal["member", "monitor"]

OVERSIGHT_ROLES = frozenset({Role.SUPERVISOR, Role.DISPATCHER, Role.ADMIN})
AUDIT_ROLES = frozenset({Role.AUDITOR, Role.ADMIN})
# Roles that are no radio users at all: nothing live, no talkgroup, no messages.
NO_RADIO_ROLES = frozenset({Role.AUDITOR, Role.INTEGRATION})
INTEGRATION_ROLES = frozenset({Role.INTEGRATION, Role.ADMIN})


class AccessDenied(Exception):
    code = "forbidden"

    def __init__(self, message: str = "forbidden") -> None:
        super().__init__(message)
        self.message = message


def can_join(claims: Claims, tg: TalkgroupInfo) -> bool:
    """Join as a member: hear it and (floor permitting) talk on it."""
    if claims.role in NO_RADIO_ROLES:
        return False
    if tg.id in claims.talkgroups:
        return True
    return claims.role in OVERSIGHT_ROLES and tg.kind is TalkgroupKind.COMMAND


def can_monitor(claims: Claims, tg: TalkgroupInfo) -> bool:
    """Listen only."""
    if claims.role in NO_RADIO_ROLES:
        return False
    if claims.role in OVERSIGHT_ROLES:
        return True
    return tg.id in claims.talkgroups


# Who may talk on a talkgroup joined only to monitor it: the command centre speaks to the units
# it listens to (a dispatcher answering a patrol on its own channel), under that talkgroup's
# floor rules and with its own priority. Admins are left out on purpose: the role runs the
# system, it is not a radio operator; officers monitor only their own talkgroups, as members.
MONITOR_TALK_ROLES = frozenset({Role.SUPERVISOR, Role.DISPATCHER})


def can_transmit(claims: Claims, tg: TalkgroupInfo, mode: str) -> bool:
    # Re-checks membership rights rather than trusting `mode` alone: claims are re-verified on
    # each connection, but a session's join mode is state that must stay consistent with them.
    if mode == MEMBER:
        return claims.role is not Role.AUDITOR and can_join(claims, tg)
    return mode == MONITOR and claims.role in MONITOR_TALK_ROLES and can_monitor(claims, tg)


def can_audit(claims: Claims) -> bool:
    """Search and play back recordings."""
    return claims.role in AUDIT_ROLES


def can_override(claims: Claims) -> bool:
    """Revoke another unit's floor, clear an emergency."""
    return claims.role in OVERSIGHT_ROLES


def access_mode(claims: Claims, tg: TalkgroupInfo) -> Mode | None:
    """The strongest way these claims may join `tg`: "member", "monitor", or None."""
    if can_join(claims, tg):
        return MEMBER
    if can_monitor(claims, tg):
        return MONITOR
    return None


def require(allowed: bool, message: str = "forbidden") -> None:
    """Raise AccessDenied unless `allowed`: `require(can_audit(claims), "auditors only")`."""
    if not allowed:
        raise AccessDenied(message)


def can_integrate(claims: Claims) -> bool:
    """Use the incident API: open incident talkgroups, assign units, alert, read presence."""
    return claims.role in INTEGRATION_ROLES


def can_message_talkgroup(claims: Claims, tg: TalkgroupInfo) -> bool:
    """Send a text or a status to everyone in `tg`: whoever may hear it may write to it."""
    return access_mode(claims, tg) is not None


def can_message_unit(claims: Claims, to_role: Role, to_talkgroups: tuple[str, ...]) -> bool:
    """Send a text or a status to one unit. The command centre writes to anyone on the radio;
    an officer writes to the command centre and to units it shares a talkgroup with (its own
    colleagues), not to every phone of the agency."""
    if claims.role in NO_RADIO_ROLES or to_role in NO_RADIO_ROLES:
        return False
    if claims.role in OVERSIGHT_ROLES or to_role in OVERSIGHT_ROLES:
        return True
    return bool(set(claims.talkgroups) & set(to_talkgroups))


def can_replay(claims: Claims, tg: TalkgroupInfo | None, age_s: float,
               replay_hours: float) -> bool:
    """Replay a recording of `tg` that started `age_s` ago. Auditors (and admins) review
    everything; whoever may hear the talkgroup live may catch up on what it missed, within the
    talkgroup's window. A talkgroup gone from the directory (an incident closed, a private call
    over) is for auditors only."""
    if claims.role in AUDIT_ROLES:
        return True
    if tg is None or access_mode(claims, tg) is None:
        return False
    return 0 <= age_s <= replay_hours * 3600


# Who is on the radio at all, as a private call's callee; and who may call anyone of them.
CALLABLE_ROLES = frozenset({Role.OFFICER, Role.SUPERVISOR, Role.DISPATCHER})
CALL_ANYONE_ROLES = frozenset({Role.SUPERVISOR, Role.DISPATCHER})


def can_private_call(caller: Role, callee: Role) -> bool:
    """A private call (3GPP TS 24.379 section 11, "private call"): officers call officers, the
    command centre (supervisors, dispatchers) calls anyone on the radio. Auditors,
    integrations and admins are no radio operators: they neither call nor are called."""
    if callee not in CALLABLE_ROLES:
        return False
    return caller in CALL_ANYONE_ROLES or (caller is Role.OFFICER and callee is Role.OFFICER)
