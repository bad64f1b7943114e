"""Strict JSON (RFC 8259) for what clients send: only SignalingError escapes, with fixed texts.

Python's json module is lenient where a server must not be:

- it accepts NaN, Infinity and -Infinity, which are not JSON (section 6), and a NaN that gets
  in is later refused by our own encoder, on a message to everyone in a talkgroup;
- it keeps the last of duplicate member names (section 4 leaves them undefined: two parsers
  may disagree on what a message says);
- it converts integer literals of any length (a 5,000-digit one raises "Exceeds the limit
  (4300 digits) ...", and the conversion is quadratic before that), and floats that overflow
  become infinity;
- it recurses once per nesting level, so 10,000 nested brackets raise RecursionError;
- given bytes, it also guesses UTF-16 and UTF-32 (section 8.1: JSON between systems is UTF-8).

So: integers within the interoperable range of section 6 (+-(2**53 - 1)), finite floats of at
most MAX_NUMBER_CHARS characters, no duplicates, UTF-8 only, and a nesting depth checked by a
linear scan before the decoder runs.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, NoReturn

from ptt_server.core.errors import Code, SignalingError

MAX_INT = 2**53 - 1
MAX_NUMBER_CHARS = 32  # one JSON number: more is never a real value

# A JSON string, possibly unterminated (then to the end of the text). Possessive, and every
# attempt succeeds, so the scan is linear whatever the input: no backtracking on "\"\"\"...
_JSON_STRING = re.compile(r'"(?:[^"\\]++|\\.?)*+(?:"|\Z)', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_ONE_KIND = str.maketrans("{}", "[]")


def _too_deep(text: str, max_depth: int) -> bool:
    """True if arrays and objects nest deeper than `max_depth` (or do not balance).

    Run before json.loads, whose decoder recurses once per level (10,000 levels would be a
    RecursionError). Brackets inside strings do not count; what remains is reduced to its
    brackets, and each pass of removing empty pairs takes exactly one level away. Every step
    is a linear scan in C, so a 64 KiB message costs about a millisecond at worst.
    """
    if text.count("[") + text.count("{") <= max_depth:
        return False  # the common case: too few brackets to nest that deep
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)).translate(_ONE_KIND)
    for _ in range(max_depth):
        brackets = brackets.replace("[]", "")
        if not brackets:
            return False
    return True


def _no_constant(name: str) -> NoReturn:
    raise SignalingError(Code.BAD_JSON, "NaN and Infinity are not JSON numbers")


def _int(digits: str) -> int:
    # Checked before int() converts: a 5,000-digit literal would cost quadratic time, and
    # Python refuses to convert more than 4,300 digits anyway.
    if len(digits) > 17:  # "-" and the 16 digits of 2**53
        raise SignalingError(Code.BAD_MESSAGE, "a number is out of range")
    value = int(digits)
    if not -MAX_INT <= value <= MAX_INT:
        raise SignalingError(Code.BAD_MESSAGE, "a number is out of range")
    return value


def _float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise SignalingError(Code.BAD_MESSAGE, "a number is out of range")
    value = float(text)
    if not math.isfinite(value):  # 1e400 overflows to infinity
        raise SignalingError(Code.BAD_MESSAGE, "a number is out of range")
    return value


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise SignalingError(Code.BAD_JSON, "duplicate member names")
    return d


_DECODER = json.JSONDecoder(
    parse_float=_float, parse_int=_int, parse_constant=_no_constant, object_pairs_hook=_object
)


def _too_large(max_bytes: int) -> SignalingError:
    return SignalingError(Code.TOO_LARGE, f"message larger than {max_bytes} bytes")


def loads(raw: str | bytes, *, max_bytes: int, max_depth: int) -> Any:
    """The JSON value of `raw`, at most `max_bytes` of UTF-8 and `max_depth` levels deep."""
    if isinstance(raw, bytes | bytearray):
        if len(raw) > max_bytes:
            raise _too_large(max_bytes)
        try:
            text = bytes(raw).decode("utf-8")  # RFC 8259 section 8.1: UTF-8, nothing else
        except UnicodeDecodeError:
            raise SignalingError(Code.BAD_JSON, "not valid UTF-8") from None
    else:
        text = raw
        # Counted in UTF-8 bytes, as the limit is documented (a character may take four).
        if len(text) > max_bytes or (
            not text.isascii() and len(text.encode("utf-8", "surrogatepass")) > max_bytes
        ):
            raise _too_large(max_bytes)
    if _too_deep(text, max_depth):
        raise SignalingError(Code.BAD_MESSAGE, f"nested deeper than {max_depth} levels")
    try:
        return _DECODER.decode(text)
    except SignalingError:
        raise
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        raise SignalingError(Code.BAD_JSON, "not valid JSON") from None
