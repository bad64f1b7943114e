"""`serve` options for the command centre: the console's map tiles, how often officers share
their position, how often an unacknowledged emergency is repeated.

Kept apart from cli.py (which calls `add_arguments` and `config_fields`), as serve_options.py.
"""

from __future__ import annotations

import argparse
from typing import Any

from ptt_server.core import maptiles

MAX_ATTRIBUTION = 200


class OptionError(ValueError):
    """A usage error in these options (cli.py reports it like its own)."""


def add_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--map-tiles", metavar="URL-TEMPLATE",
                       help="tile server for the console's unit map, e.g. "
                       "https://tiles.example/{z}/{x}/{y}.png (default: none, a plain grid)")
    serve.add_argument("--map-attribution", metavar="TEXT",
                       help="credit shown on the map, as the tiles' licence requires")
    serve.add_argument("--location-interval", type=float, metavar="S",
                       help="how often officers who share their position send it (default 15)")
    serve.add_argument("--emergency-repeat", type=float, metavar="S",
                       help="repeat an unacknowledged emergency alert this often (default 10)")


def config_fields(ns: argparse.Namespace) -> dict[str, Any]:
    """The Config fields these options set (OptionError for a usage error)."""
    out: dict[str, Any] = {}
    if ns.map_tiles is not None:
        try:
            maptiles.tile_source(ns.map_tiles)
        except ValueError as exc:
            raise OptionError(f"--map-tiles: {exc}") from None
        out["map_tiles"] = ns.map_tiles
    if ns.map_attribution is not None:
        if len(ns.map_attribution) > MAX_ATTRIBUTION:
            raise OptionError(f"--map-attribution: at most {MAX_ATTRIBUTION} characters")
        out["map_attribution"] = ns.map_attribution
    if ns.location_interval is not None:
        if not 1.0 <= ns.location_interval <= 3600.0:
            raise OptionError("--location-interval must be in 1..3600 seconds")
        out["location_interval_s"] = ns.location_interval
    if ns.emergency_repeat is not None:
        if not 1.0 <= ns.emergency_repeat <= 600.0:
            raise OptionError("--emergency-repeat must be in 1..600 seconds")
        out["emergency_repeat_s"] = ns.emergency_repeat
    return out
