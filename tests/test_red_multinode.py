"""RED (RFC 2198) across nodes: a talker on one `ptt-server serve` process, listeners on
another, one Redis. The media bus carries a RED packet whole (a version 2 frame, its RED flag
sealed with it); the other node checks and splits it like its own talker's, so its RED
listeners get the talker's bytes and its plain listeners the primary, numbered as sent."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from client_cli.client import RED_PT, PttClient

from .test_multinode import shared_dir, token, two_nodes  # noqa: F401 (fixtures)
from .test_recording_e2e import wait_for_entries
from .test_red_e2e import assert_split, ready, red_stream, until

pytestmark = pytest.mark.slow


async def test_red_crosses_nodes_as_sent_and_split_for_plain_listeners(
    two_nodes: tuple[list[str], list[subprocess.Popen[bytes]]],  # noqa: F811
    shared_dir: Path,  # noqa: F811
) -> None:
    urls, _ = two_nodes
    clients: list[PttClient] = []

    async def make(url: str, name: str, *, send: bool, red: bool) -> PttClient:
        c = PttClient(url, token(shared_dir, name), ice_addresses=("127.0.0.1",), red=red)
        clients.append(c)
        return await ready(c, "A", send=send)

    try:
        talker = await make(urls[0], "u1", send=True, red=True)
        red_listener = await make(urls[1], "u2", send=False, red=True)
        plain_listener = await make(urls[1], "u3", send=False, red=False)
        assert talker.welcome["node"] != red_listener.welcome["node"]
        assert red_listener.welcome["node"] == plain_listener.welcome["node"]
        assert talker.red_pt == RED_PT and red_listener.red_pt == RED_PT
        lost = {10}
        talker.lose_uplink = lambda index: index in lost
        n = 40
        sent = red_stream(n)
        arrived = [k for k in range(n) if k not in lost]
        grant = await talker.request_floor("A")
        assert grant["type"] == "floor_granted"
        await talker.send_audio(sent, payload_type=talker.red_pt)
        await until(lambda: all(len(c.received("A")) >= len(arrived)
                                for c in (red_listener, plain_listener)), "the other node")
        await talker.release_floor("A")
        assert_split(red_listener, plain_listener, sent, arrived)
        # Recorded once, on the talker's node, with 10 back from 11's redundancy.
        tid = str(grant["transmission_id"])
        entry = (await wait_for_entries(shared_dir, {tid}))[tid]
        assert entry["recovered_packets"] == 1 and entry["packet_count"] == n
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
