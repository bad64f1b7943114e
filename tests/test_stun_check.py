"""media/stun_check.py: a plain check read from its bytes, answered byte for byte as aioice.

The requests are aioice's own (what an aioice client sends; browsers send the same attributes
and a few comprehension-optional ones); the expected answer is what aioice's
`request_received` would send for it."""

from __future__ import annotations

from aioice import stun
from hypothesis import given
from hypothesis import strategies as st

from ptt_server.media import stun_check

PASSWORD = b"pB0JLX7F7fq6tYn7WSOier"


def request(**extra: object) -> stun.Message:
    message = stun.Message(message_method=stun.Method.BINDING,
                           message_class=stun.Class.REQUEST)
    message.attributes["USERNAME"] = "srvufrag:cliufrag"
    message.attributes["PRIORITY"] = 1853824767
    message.attributes["ICE-CONTROLLING"] = 12345678901
    message.attributes.update(extra)  # type: ignore[arg-type]
    message.add_message_integrity(PASSWORD)
    return message


def aioices_answer(message: stun.Message, addr: tuple[str, int]) -> bytes:
    response = stun.Message(message_method=stun.Method.BINDING,
                            message_class=stun.Class.RESPONSE,
                            transaction_id=message.transaction_id)
    response.attributes["XOR-MAPPED-ADDRESS"] = addr
    response.add_message_integrity(PASSWORD)
    return bytes(response)


def test_a_plain_check_is_read_verified_and_answered_as_aioice_answers_it() -> None:
    message = request()
    data = bytes(message)
    check = stun_check.read_check(data)
    assert check is not None
    assert check.username == b"srvufrag:cliufrag" and check.controlling is True
    assert stun_check.verify(data, check, PASSWORD)
    for addr in (("127.0.0.1", 50000), ("192.0.2.200", 1), ("2001:db8::7", 65535)):
        answer = stun_check.response(data, addr, PASSWORD)
        assert answer == aioices_answer(message, addr)
        parsed = stun.parse_message(answer)  # and aioice takes it: integrity, fingerprint
        assert parsed.check_message_integrity(PASSWORD)
        assert parsed.attributes["XOR-MAPPED-ADDRESS"] == addr


def test_a_wrong_password_does_not_verify() -> None:
    data = bytes(request())
    check = stun_check.read_check(data)
    assert check is not None
    assert not stun_check.verify(data, check, b"another password of 22")
    # Without FINGERPRINT (optional in a request), a changed USERNAME still reads as a check,
    # and only MESSAGE-INTEGRITY refuses it.
    bare = data[:2] + (len(data) - 20 - 8).to_bytes(2, "big") + data[4:-8]
    check = stun_check.read_check(bare)
    assert check is not None and stun_check.verify(bare, check, PASSWORD)
    tampered = bytearray(bare)
    tampered[25] ^= 1  # inside USERNAME
    check = stun_check.read_check(bytes(tampered))
    assert check is not None and not stun_check.verify(bytes(tampered), check, PASSWORD)


def test_anything_but_a_plain_check_is_left_to_aioice() -> None:
    assert stun_check.read_check(bytes(request(**{"USE-CANDIDATE": None}))) is None
    controlled = stun_check.read_check(bytes(request(**{"ICE-CONTROLLED": 1})))
    assert controlled is not None and controlled.controlling is False  # the caller decides
    unsigned = request()
    unsigned.attributes.pop("MESSAGE-INTEGRITY")
    unsigned.attributes.pop("FINGERPRINT")
    assert stun_check.read_check(bytes(unsigned)) is None
    data = bytes(request())
    assert stun_check.read_check(data[:-1]) is None  # length does not match
    broken = bytearray(data)
    broken[-1] ^= 0xFF  # FINGERPRINT
    assert stun_check.read_check(bytes(broken)) is None
    # FINGERPRINT is optional in a request: without it a check is still plain, but not with
    # an attribute that must be understood in place of USERNAME.
    bare = data[:2] + (len(data) - 20 - 8).to_bytes(2, "big") + data[4:-8]
    assert stun_check.read_check(bare) is not None
    required = bytearray(bare)
    required[20:22] = (0x0003).to_bytes(2, "big")
    assert stun_check.read_check(bytes(required)) is None
    response = bytearray(data)
    response[0:2] = b"\x01\x01"
    assert stun_check.read_check(bytes(response)) is None


@given(st.binary(max_size=120))
def test_any_bytes_are_read_or_refused_without_an_error(data: bytes) -> None:
    for candidate in (data, bytes(request())[:20] + data):
        stun_check.read_check(candidate)
