"""Draw the app icons (client_web/img/icon-192.png, icon-512.png) from the shapes of
img/icon.svg, without an image library: the manifest needs PNGs, and a closed network's
build machines should not need a rasteriser to remake them.

    python client_web/tools/icons.py
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

BG = (0x0B, 0x10, 0x16)
GREEN = (0x19, 0xC3, 0x7D)
YELLOW = (0xFF, 0xD2, 0x3F)
SS = 4  # samples per pixel side: smooth edges without a rasteriser

# The radio of icon.svg on its 64-unit grid, drawn over a full-bleed background so the icon
# also works when a launcher masks it (maskable: the radio stays inside the safe zone).
RECTS = [  # (x, y, w, h, radius, colour), painted in order
    (22, 6, 4, 14, 2, YELLOW),
    (16, 18, 32, 40, 7, GREEN),
    (22, 25, 20, 11, 2, BG),
]
CIRCLES = [(26, 46, 3, BG), (38, 46, 3, BG)]
SCALE = 0.78  # shrink the drawing towards the centre: the maskable safe zone is 80 %


def _inside_rect(x: float, y: float, r: tuple) -> bool:
    rx, ry, w, h, rad, _ = r
    if not (rx <= x <= rx + w and ry <= y <= ry + h):
        return False
    cx = min(max(x, rx + rad), rx + w - rad)
    cy = min(max(y, ry + rad), ry + h - rad)
    return (x - cx) ** 2 + (y - cy) ** 2 <= rad * rad


def _colour(x: float, y: float) -> tuple[int, int, int]:
    # Map the pixel back to the drawing's grid, centred.
    gx = (x - 32) / SCALE + 32
    gy = (y - 32) / SCALE + 32
    colour = BG
    for r in RECTS:
        if _inside_rect(gx, gy, r):
            colour = r[5]
    for cx, cy, rad, c in CIRCLES:
        if (gx - cx) ** 2 + (gy - cy) ** 2 <= rad * rad:
            colour = c
    return colour


def render(size: int) -> bytes:
    rows = []
    for py in range(size):
        row = bytearray(b"\x00")  # filter type 0
        for px in range(size):
            acc = [0, 0, 0]
            for sy in range(SS):
                for sx in range(SS):
                    c = _colour((px + (sx + 0.5) / SS) * 64 / size,
                                (py + (sy + 0.5) / SS) * 64 / size)
                    acc[0] += c[0]
                    acc[1] += c[1]
                    acc[2] += c[2]
            row += bytes(v // (SS * SS) for v in acc)
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"".join(rows), 9)) + chunk(b"IEND", b""))


if __name__ == "__main__":
    img = Path(__file__).resolve().parents[1] / "img"
    for n in (192, 512):
        (img / f"icon-{n}.png").write_bytes(render(n))
        print(f"img/icon-{n}.png")
