"""Who gets a message that is not about one member: an alert, an event, a system alert.

Each text is encoded once, by whoever sent it, and handed to every recipient as it is: the
lists can be long (every supervisor online, every member of a patch).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from ptt_server.node.endpoint import Endpoint

# Those who are told of every emergency and every trouble with the service, whatever
# talkgroups they are in.
ALERTED_ROLES = frozenset({"supervisor", "dispatcher", "admin"})


class Member(Protocol):
    endpoint: Endpoint


def to_talkgroups(
    members: Mapping[str, Mapping[str, Member]], talkgroups: Iterable[Any], text: str
) -> None:
    """Every local member of the talkgroups named, once each."""
    told: set[str] = set()
    for talkgroup in talkgroups:
        for sid, entry in list(members.get(str(talkgroup), {}).items()):
            if sid not in told:
                told.add(sid)
                entry.endpoint.send_text(text)


def to_command(
    endpoints: Mapping[str, Endpoint], text: str, also: Mapping[str, object] | None = None
) -> None:
    """Every supervisor, dispatcher and admin on this node, and the sessions in `also`."""
    also = also or {}
    for sid, endpoint in list(endpoints.items()):
        if str(endpoint.claims.role) in ALERTED_ROLES or sid in also:
            endpoint.send_text(text)
