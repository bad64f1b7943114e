"""The whole access matrix: every role x assigned or not x normal or command talkgroup."""

from __future__ import annotations

import itertools

import pytest

from ptt_server.core import access
from ptt_server.core.access import AccessDenied
from ptt_server.core.model import ROLE_PRIORITY, Claims, Role, TalkgroupInfo, TalkgroupKind

NORMAL = TalkgroupInfo("north", "North", TalkgroupKind.NORMAL)
COMMAND = TalkgroupInfo("cmd", "Command", TalkgroupKind.COMMAND)
INCIDENT = TalkgroupInfo("INC-1", "110: robbery", TalkgroupKind.INCIDENT)
OF, S, D, AU, AD = Role.OFFICER, Role.SUPERVISOR, Role.DISPATCHER, Role.AUDITOR, Role.ADMIN
IN = Role.INTEGRATION
TALKGROUPS = {TalkgroupKind.NORMAL: NORMAL, TalkgroupKind.COMMAND: COMMAND,
              TalkgroupKind.INCIDENT: INCIDENT}


def claims(role: Role, talkgroups: tuple[str, ...]) -> Claims:
    return Claims(
        sub="u", role=role, talkgroups=talkgroups, priority=ROLE_PRIORITY[role], alias="U",
        exp=0, iss="ptt-server", aud="ptt",
    )


# (role, assigned?, talkgroup) -> (can_join, can_monitor), written out by hand.
MATRIX: dict[tuple[Role, bool, TalkgroupKind], tuple[bool, bool]] = {
    (OF, True, TalkgroupKind.NORMAL): (True, True),
    (OF, False, TalkgroupKind.NORMAL): (False, False),
    (OF, True, TalkgroupKind.COMMAND): (True, True),
    (OF, False, TalkgroupKind.COMMAND): (False, False),
    (S, True, TalkgroupKind.NORMAL): (True, True),
    (S, False, TalkgroupKind.NORMAL): (False, True),
    (S, True, TalkgroupKind.COMMAND): (True, True),
    (S, False, TalkgroupKind.COMMAND): (True, True),
    (D, True, TalkgroupKind.NORMAL): (True, True),
    (D, False, TalkgroupKind.NORMAL): (False, True),
    (D, True, TalkgroupKind.COMMAND): (True, True),
    (D, False, TalkgroupKind.COMMAND): (True, True),
    (AD, True, TalkgroupKind.NORMAL): (True, True),
    (AD, False, TalkgroupKind.NORMAL): (False, True),
    (AD, True, TalkgroupKind.COMMAND): (True, True),
    (AD, False, TalkgroupKind.COMMAND): (True, True),
    (AU, True, TalkgroupKind.NORMAL): (False, False),
    (AU, False, TalkgroupKind.NORMAL): (False, False),
    (AU, True, TalkgroupKind.COMMAND): (False, False),
    (AU, False, TalkgroupKind.COMMAND): (False, False),
    # An incident talkgroup is given to the units sent (assigned), like a normal one; the
    # command centre may monitor it. An integration opens it but never joins anything.
    **{(role, assigned, TalkgroupKind.INCIDENT): (assigned, assigned or role in (S, D, AD))
       for role in (OF, S, D, AD) for assigned in (True, False)},
    **{(AU, assigned, TalkgroupKind.INCIDENT): (False, False) for assigned in (True, False)},
    **{(IN, assigned, kind): (False, False) for assigned in (True, False)
       for kind in TalkgroupKind},
}


def test_matrix_is_complete() -> None:
    assert set(MATRIX) == set(itertools.product(Role, (True, False), TalkgroupKind))


@pytest.mark.parametrize(("case", "expected"), list(MATRIX.items()), ids=str)
def test_join_monitor_transmit(
    case: tuple[Role, bool, TalkgroupKind], expected: tuple[bool, bool]
) -> None:
    role, assigned, kind = case
    tg = TALKGROUPS[kind]
    # Other talkgroups in the claims must never matter.
    c = claims(role, ("other", tg.id) if assigned else ("other",))
    join, monitor = expected
    assert access.can_join(c, tg) is join
    assert access.can_monitor(c, tg) is monitor
    # Transmit: as a member where joining as a member is allowed; as a monitor only
    # supervisors and dispatchers (core/access.py MONITOR_TALK_ROLES), where they may monitor.
    assert access.can_transmit(c, tg, "member") is join
    assert access.can_transmit(c, tg, "monitor") is (monitor and role in (S, D))
    assert access.can_transmit(c, tg, "bogus") is False
    assert access.access_mode(c, tg) == ("member" if join else "monitor" if monitor else None)


@pytest.mark.parametrize("role", list(Role))
def test_role_powers(role: Role) -> None:
    c = claims(role, ("north",))
    assert access.can_audit(c) is (role in (AU, AD))
    assert access.can_override(c) is (role in (S, D, AD))


def test_auditor_listed_talkgroups_grant_nothing() -> None:
    c = claims(AU, ("north", "cmd"))
    for tg in (NORMAL, COMMAND):
        assert not access.can_join(c, tg)
        assert not access.can_monitor(c, tg)
        assert not access.can_transmit(c, tg, "member")
        assert access.access_mode(c, tg) is None


def test_talkgroup_ids_match_exactly() -> None:
    c = claims(OF, ("nort", "north2", "NORTH"))
    assert not access.can_join(c, NORMAL)
    assert not access.can_monitor(c, NORMAL)


def test_require() -> None:
    access.require(True)
    with pytest.raises(AccessDenied) as e:
        access.require(False, "auditors only")
    assert e.value.code == "forbidden" and str(e.value) == "auditors only"
    assert AccessDenied().code == "forbidden"


def test_supervisors_and_dispatchers_talk_on_what_they_monitor() -> None:
    # The console's per-panel talk: control monitors a patrol talkgroup it is not assigned to
    # and answers on it. Nobody else gains a transmit right from monitoring.
    for role in (S, D):
        assert access.can_transmit(claims(role, ("cmd",)), NORMAL, "monitor")
    assert not access.can_transmit(claims(AD, ("cmd",)), NORMAL, "monitor")
    assert not access.can_transmit(claims(OF, ("north",)), NORMAL, "monitor")
    assert not access.can_transmit(claims(AU, ("north",)), NORMAL, "monitor")
    assert not access.can_transmit(claims(S, ("cmd",)), NORMAL, "listen")


@pytest.mark.parametrize("role", list(Role))
def test_who_may_integrate_and_write(role: Role) -> None:
    c = claims(role, ("north",))
    assert access.can_integrate(c) is (role in (IN, AD))
    assert access.can_message_talkgroup(c, NORMAL) is (role not in (AU, IN))
    # To one unit: the command centre to anyone; an officer to control or a colleague.
    for to_role, shared, allowed in (
        (OF, ("north",), role in (OF, S, D, AD)),
        (OF, ("south",), role in (S, D, AD)),
        (D, ("cmd",), role in (OF, S, D, AD)),
        (AU, ("north",), False),
        (IN, ("north",), False),
    ):
        assert access.can_message_unit(c, to_role, shared) is allowed, (to_role, shared)
