"""Server -> client messages: the encoder, and docs/protocol.md kept in step with both
directions of the protocol (every message documented, with the right direction and the right
fields; nothing documented that does not exist)."""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import pytest

from ptt_server.core import messages as m
from ptt_server.core import protocol as p
from ptt_server.core.errors import SignalingError
from ptt_server.service import ws

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
SERVER_CLASSES = get_args(m.ServerMessage)


def _wire_name(cls: type) -> str:
    return str(next(f.default for f in dataclasses.fields(cls) if f.name == "type"))


CLIENT_TYPES = {_wire_name(cls) for cls in get_args(p.ClientMessage)}
SERVER_TYPES = {_wire_name(cls) for cls in SERVER_CLASSES}


# -- a sample of every message, built from its annotations ------------------------------------
def _sample(hint: Any) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return _sample(next(a for a in args if a is not type(None)))
    if origin is Literal:
        return args[0]
    if origin is tuple:
        return (_sample(args[0]), _sample(args[0]))
    if origin is dict:
        return {"A": _sample(args[1]), "B": _sample(args[1])}
    if dataclasses.is_dataclass(hint):
        return _instance(hint)  # type: ignore[arg-type]
    return {str: "x", int: 7, float: 1.5, bool: True}[hint]


def _instance(cls: type) -> Any:
    hints = get_type_hints(cls)
    kwargs = {
        f.name: _sample(hints[f.name]) for f in dataclasses.fields(cls)
        if f.name not in ("type", "extra")
    }
    return cls(**kwargs)


def _keys(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)} - {"extra"}


@pytest.mark.parametrize("cls", SERVER_CLASSES, ids=_wire_name)
def test_every_message_encodes_its_fields(cls: type) -> None:
    msg = _instance(cls)
    text = m.encode(msg)
    assert " " not in text.replace("x", "")  # compact
    decoded = json.loads(text)
    assert decoded["type"] == _wire_name(cls) == m.wire_name(cls)
    assert next(iter(decoded)) == "type"  # first, for whoever reads the wire
    assert set(decoded) == _keys(cls)
    # Nested parts (members, floor, holder, patch) are objects with their own fields.
    hints = get_type_hints(cls)
    for name in _keys(cls) - {"type"}:
        value, hint = decoded[name], hints[name]
        inner = [a for a in get_args(hint) if dataclasses.is_dataclass(a)]
        if dataclasses.is_dataclass(hint) or inner:
            part = hint if dataclasses.is_dataclass(hint) else inner[0]
            for item in value if isinstance(value, list) else [value]:
                assert set(item) == _keys(part)


def test_message_types_are_complete_and_unique() -> None:
    assert len(SERVER_TYPES) == len(SERVER_CLASSES)
    assert set(m.MESSAGE_TYPES) == SERVER_TYPES
    assert all(m.MESSAGE_TYPES[_wire_name(cls)] is cls for cls in SERVER_CLASSES)


def test_shapes_of_nested_parts() -> None:
    idle = json.loads(m.encode(m.Joined(
        talkgroup="A", mode="member", name="Alpha", kind="normal", members=(),
        presence_revision=1,
        floor=m.FloorView(state="idle"), patch=None,
    )))
    assert idle["members"] == [] and idle["patch"] is None
    assert idle["floor"] == {
        "state": "idle", "unit": None, "alias": None, "transmission_id": None,
        "emergency": False,
    }
    denied = json.loads(m.encode(m.FloorDenied(talkgroup="A", reason="queue_timeout",
                                               holder=None)))
    assert denied == {"type": "floor_denied", "talkgroup": "A", "reason": "queue_timeout",
                      "holder": None}
    granted = json.loads(m.encode(m.AllCallGranted(all_call_id="c", talkgroups={"A": "t1"})))
    assert granted["talkgroups"] == {"A": "t1"}


def test_error_extra_fields_sit_beside_code_and_message() -> None:
    text = m.encode(m.error("rate_limited", "slow down", retry_after_s=0.5))
    assert json.loads(text) == {"type": "error", "code": "rate_limited",
                                "message": "slow down", "retry_after_s": 0.5}
    assert json.loads(m.encode(m.Error(code="internal", message="oops"))) == {
        "type": "error", "code": "internal", "message": "oops"}
    with pytest.raises(ValueError, match="type"):
        m.error("internal", "oops", type="other")


def test_nan_is_refused_with_the_field_named() -> None:
    with pytest.raises(m.EncodeError, match="'floor_warning': remaining_s is nan"):
        m.encode(m.FloorWarning(talkgroup="A", transmission_id="t",
                                remaining_s=float("nan")))
    with pytest.raises(m.EncodeError, match=r"location\.lat is inf"):
        m.encode(m.Emergency(talkgroup="A", unit="u", alias="U", ts=1.0,
                             location={"lat": float("inf"), "lon": 4.0}))
    with pytest.raises(m.EncodeError, match=r"members\[0\] is a object"):
        m.encode(m.Presence(talkgroup="A", revision=1, members=(object(),)))  # type: ignore[arg-type]


def test_messages_are_frozen_and_keyword_only() -> None:
    msg = m.Left(talkgroup="A")
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.talkgroup = "B"  # type: ignore[misc]
    with pytest.raises(TypeError):
        m.Left("A")  # type: ignore[misc]


# -- docs/protocol.md -------------------------------------------------------------------------
HEADING = re.compile(r"^### (.+)$", re.MULTILINE)
# In a heading, a name in backquotes, or a direction in parentheses "(sender → receiver)":
# a direction applies to every name since the previous one.
TOKEN = re.compile(r"`([a-z_]+)`|\(([^()]*→[^()]*)\)")
JSON_BLOCK = re.compile(r"```json\n(.*?)```", re.DOTALL)


def _documented() -> set[tuple[str, str]]:
    """(type, "to_server" or "to_client") for each message heading of the doc."""
    found: set[tuple[str, str]] = set()
    for heading in HEADING.findall(DOC.read_text()):
        names: list[str] = []
        for name, direction in TOKEN.findall(heading):
            if name:
                names.append(name)
                continue
            sender, _, receiver = direction.partition("→")
            if sender.strip() == "server":
                way = "to_client"
            elif receiver.split(",")[0].strip() == "server":
                way = "to_server"
            else:
                raise AssertionError(f"neither end is the server: {heading!r}")
            found |= {(n, way) for n in names}
            names = []
        assert not names, f"no direction for {names} in {heading!r}"
    return found


def _examples() -> list[dict[str, Any]]:
    """Every JSON object in the doc's json code blocks (one or more per block)."""
    decoder = json.JSONDecoder()
    out = []
    for block in JSON_BLOCK.findall(DOC.read_text()):
        at = 0
        while True:
            while at < len(block) and block[at].isspace():
                at += 1
            if at == len(block):
                break
            obj, at = decoder.raw_decode(block, at)
            out.append(obj)
    return out


def test_doc_headings_cover_both_directions_exactly() -> None:
    documented = _documented()
    to_server = {name for name, way in documented if way == "to_server"}
    to_client = {name for name, way in documented if way == "to_client"}
    assert to_server == CLIENT_TYPES, "client -> server messages vs docs/protocol.md"
    assert to_client == SERVER_TYPES, "server -> client messages vs docs/protocol.md"


def test_doc_examples_are_real_messages() -> None:
    examples = _examples()
    seen = {e["type"] for e in examples if "type" in e}
    assert seen <= CLIENT_TYPES | SERVER_TYPES, "examples of messages that do not exist"
    assert seen == CLIENT_TYPES | SERVER_TYPES, "every message has an example"
    for example in examples:
        kind = example["type"]
        if kind in CLIENT_TYPES:
            try:
                p.parse(json.dumps(example))  # the parser accepts what the doc shows
            except SignalingError as exc:
                raise AssertionError(f"doc example refused: {example}: {exc}") from None
        if kind in SERVER_TYPES:
            cls = m.MESSAGE_TYPES[kind]
            keys = set(example)
            if cls is m.Error:
                assert keys >= _keys(cls), example
            else:
                assert keys == _keys(cls), f"doc example of {kind!r} has other fields"
            for name, part in (("members", m.MemberView), ("floor", m.FloorView),
                               ("holder", m.Holder)):
                value = example.get(name)
                for item in value if isinstance(value, list) else [value]:
                    if isinstance(item, dict):
                        assert set(item) == _keys(part), (kind, name)


def test_doc_heartbeat_matches_the_server() -> None:
    text = DOC.read_text()
    welcome = next(e for e in _examples() if e.get("type") == "welcome")
    assert welcome["heartbeat_s"] == ws.HEARTBEAT_S
    assert f"pings the socket every {ws.HEARTBEAT_S:g} s" in text
    assert f"more than {ws.PONG_TIMEOUT_S:g} s late" in text
