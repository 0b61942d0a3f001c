"""Bounded memory and time for any image (issue 25, section 4): an image whose header promises
more pixels than ncslim decodes (:data:`ncslim.data.decode.MAX_PIXELS`) is refused in one line
naming it, from its header, in this process or in a decoding pool, whatever its format."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hostile import _exit_2_one_line

from ncslim.data import DataError
from ncslim.data import decode as D

Image = pytest.importorskip("PIL.Image")
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


# ----------------------------------------------------------------------------- image headers


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, depth: int = 16, colour: int = 0, rows: int = 0) -> bytes:
    """A PNG of ``width`` x ``height``; its first ``rows`` rows of zeros are in the file (all of
    them: a decompression bomb; none: a header that promises the size)."""
    row = bytes(1 + width * {0: 1, 2: 3, 4: 2, 6: 4}[colour] * depth // 8)
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(rows)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", body)
            + _chunk(b"IEND", b""))


def bmp(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 70, 0, 0, 54) + info + bytes(16)


def gif(width: int, height: int) -> bytes:
    return (b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0) + b","
            + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x4c\x01\x00;")


def tiff(width: int, height: int) -> bytes:
    tags = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1),
            (262, 3, 1, 1), (273, 4, 1, 122), (277, 3, 1, 1), (278, 4, 1, height),
            (279, 4, 1, width * height)]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", *t) for t in tags)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + bytes(4 + 64)


def _pillow(fmt: str, **options) -> bytearray:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, fmt, **options)
    return bytearray(buf.getvalue())


def jpeg(width: int, height: int) -> bytes:
    data = _pillow("JPEG")
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def webp(width: int, height: int) -> bytes:
    data = _pillow("WEBP", lossless=True)
    at = data.index(b"VP8L") + 8  # the signature byte, then 14 bits of width-1 and height-1
    rest = int.from_bytes(data[at + 1:at + 5], "little") & ~((1 << 28) - 1)
    data[at + 1:at + 5] = ((width - 1) | (height - 1) << 14 | rest).to_bytes(4, "little")
    return bytes(data)


FORMATS = {"png16": (png, ".png", 65535), "png-rgba": (lambda w, h: png(w, h, 8, 6), ".png",
                                                       65535),
           "bmp": (bmp, ".bmp", 65535), "gif": (gif, ".gif", 65535), "tiff": (tiff, ".tif", 65535),
           "jpeg": (jpeg, ".jpg", 65535), "webp": (webp, ".webp", 16384)}


@st.composite
def huge_headers(draw) -> tuple[str, int, int]:
    """A format and a size over the pixel budget (after the JPEG draft, at most 1/8 per side)."""
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    most = FORMATS[fmt][2]
    scale = 8 if fmt == "jpeg" else 1
    width = draw(st.integers(1, most))
    low = (D.MAX_PIXELS * scale * scale) // width + 1
    if low > most:
        width, low = most, (D.MAX_PIXELS * scale * scale) // most + 1
    return fmt, width, draw(st.integers(low, most))


@SETTINGS
@given(case=huge_headers(), size=st.sampled_from([8, 32, 224, 1024]))
def test_an_image_promising_too_many_pixels_is_refused_before_decoding(monkeypatch, case, size):
    fmt, width, height = case
    make, suffix, _ = FORMATS[fmt]
    decoded = []
    with tempfile.TemporaryDirectory() as folder, monkeypatch.context() as patch:
        path = Path(folder) / f"huge{suffix}"
        path.write_bytes(make(width, height))
        patch.setattr(Image.Image, "load", lambda *_: decoded.append(1))
        with pytest.raises(DataError) as err:
            D.decode_image(str(path), size)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{path}: ")
    assert "pixels, more than the 33,554,432 an image may decode to; downscale it" in text
    assert not decoded  # refused from the header: no pixel was decoded


@pytest.mark.parametrize("fmt", ["png16", "png-rgba", "bmp", "gif", "tiff", "webp"])
def test_the_budget_is_exact(tmp_path, monkeypatch, fmt):
    """An image of MAX_PIXELS decodes; one pixel row more is refused."""
    monkeypatch.setattr(D, "MAX_PIXELS", 20 * 30)
    array = Image.new("RGB", (20, 30), (10, 200, 30))
    fit, over = tmp_path / f"fit{FORMATS[fmt][1]}", tmp_path / f"over{FORMATS[fmt][1]}"
    kind = {"png16": "I;16", "png-rgba": "RGBA", "gif": "P", "tiff": "L"}.get(fmt, "RGB")
    array.convert(kind).save(fit)
    array.resize((20, 31)).convert(kind).save(over)
    assert D.decode_image(str(fit), 16).shape == (3, 16, 16)
    with pytest.raises(DataError, match="20 x 31 = 620 pixels, more than the 600"):
        D.decode_image(str(over), 16)


BOMB = r"""
import json, re, resource, sys, time
from ncslim.data import DataError
from ncslim.data import decode as D
paths, pool = sys.argv[1:-1], sys.argv[-1]
D.SERIAL_BELOW, D.CHUNK = (0, 1) if pool != "serial" else (D.SERIAL_BELOW, D.CHUNK)
started = time.perf_counter()
try:
    D.decode_images(paths, 32, workers=2, pool="threads" if pool == "serial" else pool)
    error = None
except DataError as err:
    error = str(err)
peak = int(re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read())[1]) * 1024
children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"error": error, "peak": max(peak, children),
                  "seconds": time.perf_counter() - started}))
"""


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    """Decompression bombs under 1 MB: every row of zeros is in the file. A 16-bit grayscale
    PNG of 8000 x 8000 (64 megapixels: under Pillow's own warning; before the budget its
    decoding took ~1.7 GB) and an 8-bit RGBA one of 6000 x 6000."""
    folder = tmp_path_factory.mktemp("bombs")
    made = {"png16.png": png(8000, 8000, rows=8000),
            "rgba.png": png(6000, 6000, 8, 6, rows=6000)}
    for name, data in made.items():
        assert len(data) < 1_000_000
        (folder / name).write_bytes(data)
    (folder / "fine.png").write_bytes(png(40, 30, rows=30))
    return {name: folder / name for name in (*made, "fine.png")}


@pytest.mark.parametrize("pool", ["serial", "processes", "threads"])
@pytest.mark.parametrize("bomb", ["png16.png", "rgba.png"])
def test_a_decompression_bomb_costs_bounded_memory_even_in_the_pool(bombs, bomb, pool):
    paths = [bombs["fine.png"]] * 3 + [bombs[bomb]] + [bombs["fine.png"]]
    done = subprocess.run([sys.executable, "-c", BOMB, *map(str, paths), pool],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["error"].startswith(f"{bombs[bomb]}: ")
    assert "pixels, more than the 33,554,432" in report["error"]
    assert report["peak"] < 512 << 20  # bytes: torch and Pillow, no image
    assert report["seconds"] < 10


def test_a_bomb_in_an_image_folder_is_one_line_and_nothing_is_written(tmp_path, bombs, capsys,
                                                                       monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "images"
    for split, count in (("train", 3), ("val", 1)):
        for name in ("cat", "dog"):
            for i in range(count):
                (root / split / name).mkdir(parents=True, exist_ok=True)
                (root / split / name / f"{i}.png").write_bytes(bombs["fine.png"].read_bytes())
    (root / "train" / "dog" / "9.png").write_bytes(bombs["png16.png"].read_bytes())
    out = tmp_path / "run"
    err = _exit_2_one_line(["train", "--dataset", "folder", "--data-dir", str(root), "--out",
                            str(out), "--epochs", "1"], capsys)
    assert "9.png: 8000 x 8000 = 64,000,000 pixels, more than the 33,554,432" in err
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_a_fifo_put_in_place_of_an_image_after_the_scan_is_refused_not_waited_on(tmp_path):
    import os
    import threading

    from ncslim.data.decode import decode_image

    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)  # the scan saw a file here; decoding opens what is there now
    outcome: list[BaseException | None] = []

    def decode() -> None:
        try:
            decode_image(str(fifo), 8)
            outcome.append(None)
        except BaseException as err:  # noqa: BLE001  what decoding raised, checked below
            outcome.append(err)

    worker = threading.Thread(target=decode, daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # blocked in open(): unblock it by opening the other end, then fail
        with open(fifo, "wb"):
            pass
        pytest.fail("decoding waited on a FIFO")
    assert outcome and "FIFO" in str(outcome[0]) and str(fifo) in str(outcome[0])
