"""Floor messages in the order the floor changed: a member never hears a new grant while the
transmission before it has not ended by its own messages (TS 24.380 6.2.4: the floor is idle
between two talkers), even when the next talker's request is answered on the node before the
previous holder's end comes back through Redis pub/sub. Real server, real Redis, many
talkgroups at once, the node's subscriber lagging behind its commands."""

from __future__ import annotations

import asyncio
from typing import Any

from client_cli.client import PttClient
from ptt_server.core.model import Role
from ptt_server.identity.directory import Directory
from ptt_server.node.node import Node
from ptt_server.service.keys import NODE

from .conftest import RunningServer
from .test_media_e2e import Connect, connect
from .test_redis_restart import seen_overlaps

__all__ = ["connect"]

TALKGROUPS = 16
ROUNDS = 8
LAG_S = 0.05  # the subscriber's lag behind the node's own commands


def lag_the_subscriber(node: Node) -> asyncio.Task[None]:
    """Every floor event reaches the node LAG_S late, in order: a subscriber with a backlog,
    as on a node busy with a burst, while the replies to its own writes come at once."""
    deliver = node._dispatch
    queue: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def lagging(message: dict[str, Any]) -> None:
        queue.put_nowait((loop.time() + LAG_S, message))

    async def run() -> None:
        while True:
            due, message = await queue.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            deliver(message)

    node._dispatch = lagging  # type: ignore[method-assign]
    return loop.create_task(run())


async def test_a_grant_never_overtakes_the_previous_holders_end(
    server: RunningServer, connect: Connect
) -> None:
    lag = lag_the_subscriber(server.app[NODE])  # type: ignore[index]
    d = Directory(server.config.data_dir / "directory.sqlite3")
    groups = [f"ORD{i}" for i in range(TALKGROUPS)]
    for tg in groups:
        d.add_talkgroup(tg, name=tg)
        for role in ("a", "b", "w"):
            d.add_user(f"{tg}-{role}", Role.OFFICER, [tg], "pw", alias=f"{tg} {role}")
    clients: dict[str, tuple[PttClient, PttClient, PttClient]] = {}
    for tg in groups:
        clients[tg] = (await connect(f"{tg}-a", tg, media=False),
                       await connect(f"{tg}-b", tg, media=False),
                       await connect(f"{tg}-w", tg, media=False))

    async def rounds(tg: str) -> int:
        a, b, _w = clients[tg]
        won = 0
        for i in range(ROUNDS):
            first, second = (a, b) if i % 2 == 0 else (b, a)
            grant = await first.request_floor(tg)
            assert grant["type"] == "floor_granted", grant
            # The release and the next request leave together: the request is answered
            # right after the release is written, while its idle may still be in flight.
            _idle, reply = await asyncio.gather(first.release_floor(tg),
                                                second.request_floor(tg))
            assert reply["type"] in ("floor_granted", "floor_denied"), reply
            if reply["type"] == "floor_granted":
                won += 1
                idle = await second.release_floor(tg)
                assert idle["type"] == "floor_idle", idle
            else:
                # Denied: asked before the release was written; the holder named is the
                # one that was releasing.
                assert reply["holder"]["alias"] == f"{tg} {'a' if first is a else 'b'}", reply
        return won

    try:
        raced = sum(await asyncio.wait_for(asyncio.gather(*(rounds(tg) for tg in groups)), 120))
    finally:
        lag.cancel()
    # The race was run: most second requests came after the release was written.
    assert raced > 0
    for tg in groups:
        a, b, w = clients[tg]
        # Every member saw idle before the next grant or floor_taken of this talkgroup.
        # (Each member's own order is what the server decides; the order in which two
        # members' sockets are read here, microseconds apart, is not.)
        for c in (a, b, w):
            assert seen_overlaps(c, tg) == [], (tg, seen_overlaps(c, tg))
