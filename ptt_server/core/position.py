"""Positions officers share with the command centre: the `location` client message.

Kept out of protocol.py (which re-exports `Location`) so the rules for what a position may be
are read in one place. Parsing is as strict as the rest of the protocol: numbers only (no
strings, no booleans), finite, in range; nothing of the input is echoed in an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from ptt_server.core.errors import Code, SignalingError

# WGS 84 degrees; accuracy in metres (the radius of 68 % confidence, as the Geolocation API
# reports it). A position vaguer than 1,000 km is no position.
LAT_RANGE = (-90.0, 90.0)
LON_RANGE = (-180.0, 180.0)
ACCURACY_RANGE = (0.0, 1_000_000.0)
# When the device took the fix, Unix seconds. From 2001 to 2286: any clock that reads outside
# that is broken, and a value the server could not order against its own.
TS_RANGE = (1e9, 1e10)


@dataclass(frozen=True)
class Location:
    """The sender's position now (opt-in on the officer's page, every few seconds)."""

    lat: float
    lon: float
    accuracy: float | None = None
    ts: float | None = None  # when the device took the fix; None: the server's receipt time
    type: Literal["location"] = "location"


def _number(d: dict[str, Any], key: str, bounds: tuple[float, float], *,
            required: bool) -> float | None:
    v = d.get(key)
    if v is None:
        if required:
            raise SignalingError(Code.BAD_MESSAGE, f"'{key}' is required")
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise SignalingError(Code.BAD_MESSAGE, f"'{key}' must be a number")
    value = float(v)
    low, high = bounds
    if not (math.isfinite(value) and low <= value <= high):
        raise SignalingError(Code.BAD_MESSAGE, f"'{key}' is out of range")
    return value


def parse_location(d: dict[str, Any]) -> Location:
    lat = _number(d, "lat", LAT_RANGE, required=True)
    lon = _number(d, "lon", LON_RANGE, required=True)
    assert lat is not None and lon is not None
    return Location(
        lat=lat, lon=lon,
        accuracy=_number(d, "accuracy", ACCURACY_RANGE, required=False),
        ts=_number(d, "ts", TS_RANGE, required=False),
    )
