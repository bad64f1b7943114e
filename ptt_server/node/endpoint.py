"""What the node needs of a connected client, and nothing more.

The node delivers messages to its members and asks them to close; it never reads or writes a
session's own fields. Sessions (signaling/session.py) satisfy this protocol structurally, so the
node layer does not import the signaling layer that sits above it.
"""

from __future__ import annotations

from typing import Protocol

from ptt_server.core.messages import ServerMessage
from ptt_server.core.model import Claims, EndReason


class Endpoint(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def claims(self) -> Claims: ...

    def send(self, message: ServerMessage) -> None:
        """Queue one server message."""

    def send_text(self, text: str) -> None:
        """Queue one already-encoded message (encoded once for many recipients)."""

    async def close(self, reason: EndReason) -> None: ...
