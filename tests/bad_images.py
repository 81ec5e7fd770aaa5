"""Pictures that look like PNGs but must count as unreadable, written byte by byte.

- ``bomb_png``: a valid PNG header that claims ``width x height`` pixels (default 20000 x 20000,
  more than PIL's decompression-bomb limit) with no pixel data: a few dozen bytes.
- ``undecodable_png``: an 8 x 8 PNG whose chunks all have correct checksums (``Image.verify``
  accepts it) but whose pixel data is far too short (decoding it fails).
"""
from __future__ import annotations

import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, pixel_data: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(pixel_data))
            + _chunk(b"IEND", b""))


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    return _png(width, height, b"")


def undecodable_png() -> bytes:
    return _png(8, 8, b"\x00" * 10)  # 8 rows of 1 + 8 * 3 bytes are needed: 200
