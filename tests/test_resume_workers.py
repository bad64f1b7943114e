"""A dead spot on a server with several workers (the default: one per core). The workers share
the port, so the kernel picks which one a phone's new connection reaches; the session it comes
back for lives on one of them. Whichever it reaches, the phone resumes its own session, hears
what it missed and can talk at once (service/ws_relay.py carries a connection that reached the
wrong worker to the right one). A real `ptt-server serve --workers 2`, a real Redis, real
clients; each dead spot is a connection reset (the server learns of it at once)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from client_cli.client import PttClient

from .conftest import seed_directory
from .test_http_limits import start_server, stop_server
from .test_multinode import token, wait_healthy

MAX_CYCLES = 24  # each lands on the other worker with p = 1/2: 2**-24 that none would


def _logged(log: Path, message: str) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("msg") == message:
            out.append(record)
    return out


def _reset(client: PttClient) -> None:
    """The phone's connection is gone at once (a reset), without a closing handshake."""
    assert client._ws is not None
    transport = client._ws._response.connection.transport  # type: ignore[union-attr]
    assert transport is not None
    transport.abort()


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_resume_reaching_either_worker_gets_its_session_back(
    tmp_path: Path, redis_url: str
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    seed_directory(data_dir)
    log = tmp_path / "server.log"
    proc, port = start_server(data_dir, redis_url, log, workers=2, log_format="json")
    url = f"http://127.0.0.1:{port}"
    talker = PttClient(url, token(data_dir, "u1"))
    clients = [talker]
    try:
        await wait_healthy(url, proc, timeout=60)
        await talker.connect()
        await talker.join("A")
        listener = PttClient(url, token(data_dir, "u2"))
        clients.append(listener)
        first = await listener.connect()
        await listener.join("A")
        resume_token = first["resume_token"]
        relayed = resumed = 0
        for cycle in range(MAX_CYCLES):
            received = listener.messages_received
            _reset(listener)
            # While it is away a whole transmission happens.
            grant = await talker.request_floor("A")
            assert grant["type"] == "floor_granted", (cycle, grant)
            await talker.release_floor("A")
            back = PttClient(url, token(data_dir, "u2"))
            clients.append(back)
            welcome = await back.connect(resume_token=resume_token, received=received)
            assert welcome["resumed"] is True, (cycle, welcome)
            assert welcome["session"] == first["session"] and welcome["node"] == first["node"]
            missed = await back.wait_for(
                lambda m, tid=grant["transmission_id"]: m["type"] == "floor_idle"
                and m["transmission_id"] == tid, 10)
            assert missed["reason"] == "released"
            await back.wait_for(lambda m: m["type"] == "joined" and m["talkgroup"] == "A", 10)
            # Back in its talkgroup, over whichever worker it reached: it can talk at once.
            assert (await back.request_floor("A"))["type"] == "floor_granted", cycle
            assert (await back.release_floor("A"))["reason"] == "released"
            resume_token, listener = welcome["resume_token"], back
            resumed += 1
            relayed = len(_logged(log, "session relayed"))
            if relayed >= 2 and resumed - relayed >= 1:
                break  # both paths taken, each more than by chance once
        assert relayed >= 1 and resumed - relayed >= 1, (relayed, resumed)
        # Every resume was the owner's: no second session was opened for the listener.
        opened = [r for r in _logged(log, "session opened")
                  if r.get("unit") == "u2"]
        assert len(opened) == 1, opened
    finally:
        for c in clients:
            await c.close()
        stop_server(proc)
