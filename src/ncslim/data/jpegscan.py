"""What a JPEG costs to decode, read from its markers before decoding: libjpeg holds every DCT
coefficient of the full-size image (whatever the draft's scale) for a progressive JPEG or one
whose first scan holds fewer components than the frame. :mod:`ncslim.data.decode` counts that
buffer against its pixel budget. Imports nothing of ncslim."""

from __future__ import annotations

import os
from typing import Any

_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start of frame (DHT, JPG, DAC not)
_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})


def coefficient_buffer(img: Any) -> int:
    """The bytes libjpeg holds for the whole image's coefficients while decoding ``img``: for a
    JPEG that is progressive or whose first scan holds fewer components than the frame (libjpeg's
    ``has_multiple_scans``), 2 bytes for each DCT coefficient of the full-size image, whatever
    the draft's scale; 0 for a JPEG in one scan or another format. Read from the markers up to
    the first scan; where they cannot be read so, every component is counted at full size."""
    if img.format not in ("JPEG", "MPO"):
        return 0
    fp = img.fp
    where = fp.tell()
    try:
        frame = _jpeg_frame(fp)
    finally:
        fp.seek(where)
    if frame is None:  # Pillow found a frame and a scan; count them at their most
        frame = (True, *img.size, [(1, 1)] * max(1, img.layers))
    buffered, width, height, factors = frame
    if not buffered:
        return 0
    factors = [(min(max(h, 1), 4), min(max(v, 1), 4)) for h, v in factors]
    most_h, most_v = max(h for h, _ in factors), max(v for _, v in factors)
    total = 0
    for h, v in factors:  # blocks of 8 x 8 a component, padded to whole MCUs (jdcoefct.c)
        across = _ceil(_ceil(width * h, most_h * 8), h) * h
        down = _ceil(_ceil(height * v, most_v * 8), v) * v
        total += across * down * 64 * 2
    return total


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _jpeg_frame(fp: Any) -> tuple[bool, int, int, list[tuple[int, int]]] | None:
    """(whether libjpeg buffers every coefficient, width, height, (h, v) sampling factors of
    each component) from the JPEG markers in ``fp`` up to its first scan; None where these
    cannot be read."""
    fp.seek(0)
    frame = None
    while byte := fp.read(1):
        if byte != b"\xff":  # junk between segments: skipped, as Pillow and libjpeg do
            continue
        code = fp.read(1)
        while code == b"\xff":  # fill bytes
            code = fp.read(1)
        if not code:
            return None
        marker = code[0]
        if marker in (0x00, 0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length follows
            continue
        head = fp.read(2)
        if marker == 0xD9 or len(head) < 2:
            return None
        length = int.from_bytes(head, "big") - 2
        if marker == 0xDA:  # the first scan: its component count
            scan = fp.read(1)
            if frame is None or not scan:
                return None
            progressive, width, height, factors = frame
            return progressive or scan[0] < len(factors), width, height, factors
        if marker in _SOF:
            data = fp.read(max(0, length))
            if len(data) < 6 or len(data) < 6 + 3 * data[5] or not data[5]:
                return None
            factors = [(b >> 4, b & 15) for b in data[7:6 + 3 * data[5]:3]]
            frame = (marker in _PROGRESSIVE, int.from_bytes(data[3:5], "big"),
                     int.from_bytes(data[1:3], "big"), factors)
        else:
            fp.seek(max(0, length), os.SEEK_CUR)
    return None
