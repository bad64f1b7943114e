"""The operator's map tile server (`--map-tiles`): an XYZ URL template, checked once.

The template ends up in two places that must not be injectable: the console's map (an image
URL) and the Content-Security-Policy header (the one image source allowed from elsewhere). So
it is an http(s) URL with {z}, {x} and {y}, a plain host (optionally "{s}." subdomains, which
become a "*." wildcard in the policy), and none of the characters that separate or quote CSP
source expressions.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_FORBIDDEN = re.compile(r"[\s;,'\"\\<>`]")
_HOST = re.compile(r"^[A-Za-z0-9.-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


def tile_source(template: str) -> str:
    """The CSP source expression ("https://tiles.example:8443") of a tile URL template;
    ValueError (with a reason to show) if it is not one."""
    if len(template) > 2048 or _FORBIDDEN.search(template):
        raise ValueError("a URL template without spaces, quotes, ';' or ','")
    parts = urlsplit(template)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("an http:// or https:// URL template")
    for placeholder in ("{z}", "{x}", "{y}"):
        if placeholder not in parts.path + parts.query:
            raise ValueError("the template needs {z}, {x} and {y}")
    host = parts.netloc
    wildcard = host.startswith("{s}.")
    if wildcard:
        host = host[len("{s}."):]
    if not _HOST.match(host):
        raise ValueError("a plain host name or address (no user name, no other placeholders)")
    return f"{parts.scheme}://{'*.' if wildcard else ''}{host}"
