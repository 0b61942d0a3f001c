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
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hostile import _exit_2_one_line

from ncslim.data import DataError
from ncslim.data import decode as D

Image = pytest.importorskip("PIL.Image")
Image.init()  # every plugin imported now: PalmImagePlugin loads an image as it is imported
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


# --------------------------------------- the budget applies to what is decoded (JPEG draft)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A real 96-megapixel JPEG (12000 x 8000, a 100 MP camera's photo): over Pillow's warning
    (89 megapixels) and the budget from its header; its draft for 224 decodes 1500 x 1000."""
    path = tmp_path_factory.mktemp("photo") / "photo.jpg"
    Image.new("RGB", (12000, 8000), (200, 60, 20)).save(path, quality=5)
    assert path.stat().st_size < 3_000_000
    return path


def test_a_large_jpeg_that_its_draft_brings_under_the_budget_is_decoded(photo):
    """Regression: Pillow's warning turned into a refusal before the draft refused it."""
    filters = list(warnings.filters)
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = D.decode_image(str(photo), 224)
    assert time.perf_counter() - started < 5
    assert out.shape == (3, 224, 224) and out.dtype == np.uint8
    assert abs(int(out[0].mean()) - 200) < 30 and int(out[2].mean()) < 60  # the colour it was
    assert not caught  # Pillow's decompression-bomb warning is ignored, not printed
    assert warnings.filters == filters  # and only while the file was opened


def test_a_large_jpeg_whose_draft_stays_over_the_budget_is_refused_in_one_line(photo,
                                                                                monkeypatch):
    monkeypatch.setattr(D, "MAX_PIXELS", 1_000_000)  # the draft for 224 decodes 1,500,000
    with pytest.raises(DataError) as err:
        D.decode_image(str(photo), 224)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{photo}: 12000 x 8000, decoded at a reduced "
                                                f"scale to 1500 x 1000 = 1,500,000 pixels, more "
                                                f"than the 1,000,000 an image may decode to")


def test_a_jpeg_over_pillows_hard_limit_is_decoded_when_its_draft_fits(tmp_path, monkeypatch):
    """Pillow refuses more than twice its limit (179 megapixels) before any draft; a JPEG is
    then opened without Pillow's check and its draft checked (here both limits are scaled down:
    a 200-megapixel photo would take seconds to make)."""
    path = tmp_path / "panorama.jpg"
    Image.new("RGB", (1200, 800), (20, 60, 200)).save(path, quality=5)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400_000)  # refuses over 800,000
    monkeypatch.setattr(D, "MAX_PIXELS", 100_000)
    assert D.decode_image(str(path), 32).shape == (3, 32, 32)  # draft 1/8: 150 x 100
    with pytest.raises(DataError, match=r"decoded at a reduced scale to 300 x 200 = 60,000 "
                                        r"pixels, more than the 50,000"):
        monkeypatch.setattr(D, "MAX_PIXELS", 50_000)
        D.decode_image(str(path), 200)  # draft 1/4
    png_path = tmp_path / "panorama.png"
    Image.new("RGB", (1200, 800)).save(png_path)
    with pytest.raises(DataError) as err:
        D.decode_image(str(png_path), 32)  # no draft: Pillow's error, in the one line
    assert str(err.value) == (f"{png_path}: 960,000 pixels, more than the 50,000 an image may "
                              f"decode to; downscale it or remove it")


def test_a_progressive_jpeg_counts_the_coefficients_libjpeg_holds(tmp_path, monkeypatch):
    """libjpeg decodes a JPEG in several scans through a buffer of every coefficient of the
    full-size image (2 bytes each), whatever the draft: a 96-megapixel progressive photo took
    283 MiB to decode at 1/8 scale, a baseline one 15 MiB. 1200 x 800 at 4:2:0: 2,880,000 bytes
    of coefficients; here the budget is scaled down."""
    monkeypatch.setattr(D, "MAX_PIXELS", 100_000)
    picture = Image.new("RGB", (1200, 800), (20, 60, 200))
    baseline, progressive = tmp_path / "baseline.jpg", tmp_path / "progressive.jpg"
    picture.save(baseline, quality=5)
    picture.save(progressive, quality=5, progressive=True)
    assert D.decode_image(str(baseline), 32).shape == (3, 32, 32)  # 150 x 100 at 1/8
    held = -(-2_880_000 // D.PEAK_BYTES_PER_PIXEL)
    with pytest.raises(DataError) as err:
        D.decode_image(str(progressive), 32)
    assert str(err.value) == (
        f"{progressive}: 1200 x 800 JPEG in several scans (progressive), which libjpeg decodes "
        f"through all 3 MiB of its coefficients whatever the scale: as much memory as "
        f"{15_000 + held:,} pixels, more than the 100,000 an image may decode to; save it as a "
        f"baseline JPEG, downscale it or remove it")
    monkeypatch.setattr(D, "MAX_PIXELS", 15_000 + held)  # exact: the buffer fits
    assert D.decode_image(str(progressive), 32).shape == (3, 32, 32)


def test_a_sequential_jpeg_in_one_scan_a_component_is_buffered_too(tmp_path, monkeypatch):
    """libjpeg buffers a JPEG whose first scan holds fewer components than its frame (header
    only: the scan's component count is made 1, and the file is refused before decoding)."""
    monkeypatch.setattr(D, "MAX_PIXELS", 100_000)
    buf = io.BytesIO()
    Image.new("RGB", (1200, 800), (20, 60, 200)).save(buf, "JPEG", quality=5)
    data = bytearray(buf.getvalue())
    sos = data.index(b"\xff\xda")
    assert data[sos + 4] == 3
    data[sos + 4] = 1
    path = tmp_path / "scans.jpg"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="JPEG in several scans"):
        D.decode_image(str(path), 32)


@pytest.mark.parametrize("size", [(12000, 8000), (8192, 4097)])
def test_a_png_over_the_budget_is_still_refused_in_one_line_without_a_warning(tmp_path, size):
    """Header only: 96 megapixels (Pillow warns) and one row over the budget (it does not)."""
    width, height = size
    path = tmp_path / "big.png"
    path.write_bytes(png(width, height, 8, 2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DataError) as err:
            D.decode_image(str(path), 224)
    assert str(err.value) == (f"{path}: {width} x {height} = {width * height:,} pixels, more "
                              f"than the 33,554,432 an image may decode to; downscale it or "
                              f"remove it")
    assert not caught


# ------------------------------------------------------------------ the pool's memory is bounded


def test_the_pool_has_few_enough_workers_that_its_peak_is_bounded():
    per_image = D.MAX_PIXELS * D.PEAK_BYTES_PER_PIXEL
    most = D.pool_workers(1024)
    assert most * per_image <= D.DECODE_MEMORY < (most + 1) * per_image
    assert most >= 4  # a photo folder still decodes in parallel
    assert [D.pool_workers(k) for k in (0, 1, 2, most, most + 1, 64)] == [1, 1, 2, most, most,
                                                                          most]
    assert D.pool_text(10_000, 64) == f"with {most} processes"
    assert D.pool_text(10_000, 2, "threads") == "with 2 threads"
    assert D.pool_text(10, 64) == "in this process"


def test_the_pool_bound_follows_the_budget(monkeypatch):
    monkeypatch.setattr(D, "MAX_PIXELS", 1 << 20)  # 17 MiB an image: 240 workers fit
    assert D.pool_workers(64) == 64
    monkeypatch.setattr(D, "DECODE_MEMORY", 1 << 20)  # less than one image: still one worker
    assert D.pool_workers(64) == 1


@pytest.mark.parametrize("pool", ["processes", "threads"])
def test_decode_images_starts_no_more_workers_than_the_bound(tmp_path, monkeypatch, pool):
    started = []
    make = D._executor

    def executor(kind, workers):
        started.append(workers)
        return make(kind, workers)

    monkeypatch.setattr(D, "_executor", executor)
    monkeypatch.setattr(D, "SERIAL_BELOW", 0)
    monkeypatch.setattr(D, "CHUNK", 1)
    path = tmp_path / "a.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(path)
    out = D.decode_images([str(path)] * 3, 4, workers=1000, pool=pool)
    assert out.shape == (3, 3, 4, 4) and started == [D.pool_workers(1000)]


# --------------------------------------------------- formats decoded by another program (EPS/PS)


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n/loop { loop } def loop\n%%EOF\n"


def test_eps_and_ps_are_not_counted_as_images():
    suffixes = D.image_suffixes()
    assert ".eps" not in suffixes and ".ps" not in suffixes
    assert {".jpg", ".png", ".webp"} <= suffixes


def test_a_folder_of_eps_files_holds_no_images(tmp_path):
    from ncslim.data.folder import scan_folder

    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for i in range(3):
            (tmp_path / name / f"{i}.eps").write_bytes(EPS)
    with pytest.raises(DataError) as err:
        scan_folder(tmp_path)
    text = str(err.value)
    assert "\n" not in text and "the class folder holds no images" in text


def test_an_eps_file_under_an_image_name_is_refused_without_running_ghostscript(tmp_path,
                                                                                 monkeypatch):
    ran = []
    monkeypatch.setattr(subprocess, "check_call", lambda *a, **k: ran.append(a))
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: ran.append(a))
    path = tmp_path / "loop.png"
    path.write_bytes(EPS)
    with pytest.raises(DataError) as err:
        D.decode_image(str(path), 32)
    text = str(err.value)
    assert text == (f"{path}: an EPS or PostScript file, which Pillow decodes by running "
                    f"Ghostscript, with no time limit, so ncslim does not decode it; convert it "
                    f"to PNG or remove it")
    assert not ran
