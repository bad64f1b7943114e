"""The fan-out's egress alone, in one process: CPU per listener-packet, batched or not.

Why beside the sweeps: on a shared machine the server's CPU in a sweep moves with whatever
else runs on its core, so a difference of a few µs between two ways of sending is lost in
the noise. Here real aiortc peers are connected over loopback (ICE, DTLS, SRTP keys), the
server side's tracks join one real TalkgroupRouter, and only the thread's own CPU time inside
`router.forward` is counted (CLOCK_THREAD_CPUTIME_ID): encryption, the send system calls and
the kernel's loopback delivery they include, nothing of other processes. The two ways are
measured in alternation, several rounds each, and the median is kept.

    python -m bench.egress_micro        # prints the figures as JSON
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from typing import Any

from ptt_server.media import batch
from ptt_server.media.egress import DirectRtpWriter
from ptt_server.media.router import TalkgroupRouter
from ptt_server.media.uplink import tap_receiver
from tests.rtp_support import FRAME, PeerLink

MODES = {"batched": True, "protect() + sendto": False}


class _Peer(PeerLink):
    """A listener that counts the packets it received."""

    def __init__(self) -> None:
        super().__init__()
        self.received = 0

    def tap(self, receiver: Any) -> None:
        tap_receiver(receiver, self._count)

    def _count(self, *_args: Any) -> None:
        self.received += 1


async def measure(listeners: int = 64, packets: int = 250, rounds: int = 3) -> dict[str, Any]:
    peers = [_Peer() for _ in range(listeners)]
    try:
        for i in range(0, listeners, 16):
            await asyncio.gather(*(p.connect() for p in peers[i:i + 16]))
        router = TalkgroupRouter("MICRO")
        for i, p in enumerate(peers):
            router.add_listener(f"l{i}", p.track)
        router.open("talker", "tx")
        seq = 0

        async def send(count: int) -> float:
            nonlocal seq
            cpu = 0.0
            body = b"\xf8" + bytes(79)  # an 80-byte Opus payload, a typical voice frame
            for k in range(count):
                t0 = time.thread_time()
                router.forward("talker", "tx", body, seq * FRAME, seq & 0xFFFF)
                cpu += time.thread_time() - t0
                seq += 1
                if k % 4 == 3:
                    await asyncio.sleep(0.002)  # the clients drain their sockets
            return cpu

        await send(5)  # aiortc's own senders first: their send loops start and park
        await asyncio.sleep(0.3)
        samples: dict[str, list[float]] = {m: [] for m in MODES}
        for _ in range(rounds):
            for mode, on in MODES.items():
                batch.set_enabled(on)
                for p in peers:  # a new writer is prepared under the mode just set
                    p.track.direct = DirectRtpWriter(p.transceiver)
                await send(10)
                cpu = await send(packets)
                samples[mode].append(1e6 * cpu / (packets * listeners))
        await asyncio.sleep(0.5)
        sent = sum(p.track.direct.sent for p in peers if p.track.direct is not None)
        return {
            "listeners": listeners, "packets": packets, "rounds": rounds,
            "us": {m: statistics.median(v) for m, v in samples.items()},
            "samples": samples, "received": sum(p.received for p in peers),
            "batched_calls": batch.BATCH.calls, "last_writer_sent": sent,
        }
    finally:
        batch.set_enabled(True)
        await asyncio.gather(*(p.close() for p in peers))


def run(listeners: int = 64, packets: int = 250, rounds: int = 3) -> dict[str, Any]:
    import uvloop

    return uvloop.run(measure(listeners, packets, rounds))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listeners", type=int, default=64)
    parser.add_argument("--packets", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    json.dump(run(args.listeners, args.packets, args.rounds), sys.stdout, indent=1)
    print()
