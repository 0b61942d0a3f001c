"""Image files to uint8 S x S RGB (ncslim.data.decode): the conversion rule, the pools."""

from __future__ import annotations

import numpy as np
import pytest
from test_folder import BLUE, RED, noise, one_line, save, solid

from ncslim.data import DataError
from ncslim.data import decode as D

Image = pytest.importorskip("PIL.Image")


def halves(height: int, width: int, outer=RED, inner=BLUE) -> np.ndarray:
    """``inner`` in the centred square of side min(h, w), ``outer`` around it."""
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = outer
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    image[top:top + side, left:left + side] = inner
    return image


def test_the_centre_square_is_resized_in_every_orientation(tmp_path):
    for shape in ((20, 40), (40, 20), (24, 24)):
        out = D.decode_image(str(save(tmp_path / f"{shape}.png", halves(*shape))), 10)
        assert out.shape == (3, 10, 10) and out.dtype == np.uint8
        assert solid(out[:, 1:-1, 1:-1], BLUE)  # the red border is cropped away
        assert solid(out, BLUE, tolerance=40)  # and only the filter's support reaches into it


def test_every_mode_becomes_rgb(tmp_path):
    flat = np.full((12, 12), 77, dtype=np.uint8)
    rgba = np.zeros((12, 12, 4), dtype=np.uint8)
    rgba[..., :3] = (10, 20, 30)  # fully transparent: the colour stays, the alpha goes
    palette = Image.fromarray(np.full((12, 12, 3), (200, 100, 50), dtype=np.uint8)).convert(
        "P", palette=Image.Palette.ADAPTIVE, colors=4)
    palette.save(tmp_path / "p.png")
    sixteen = Image.fromarray(np.full((12, 12), 0x1234, dtype=np.uint16))
    sixteen.save(tmp_path / "g16.png")
    cases = {
        save(tmp_path / "l.png", flat): (77, 77, 77),
        save(tmp_path / "rgba.png", rgba): (10, 20, 30),
        tmp_path / "p.png": (200, 100, 50),
        tmp_path / "g16.png": (0x12, 0x12, 0x12),  # the top byte, not clipped to white
        save(tmp_path / "la.png", np.stack([flat, flat], -1)): (77, 77, 77),
    }
    for path, colour in cases.items():
        out = D.decode_image(str(path), 8)
        assert solid(out, colour), path.name
    jpeg = D.decode_image(str(save(tmp_path / "c.jpg", np.full((16, 16, 3), RED, np.uint8))), 8)
    assert solid(jpeg, RED, tolerance=3)


def test_downsizing_is_antialiased(tmp_path):
    checkers = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    out = D.decode_image(str(save(tmp_path / "c.png", checkers)), 8).astype(float)
    assert np.abs(out - 127.5).max() < 10  # a filter without antialiasing leaves 0s and 255s


def test_exif_orientation_is_applied(tmp_path):
    image = np.empty((20, 20, 3), dtype=np.uint8)
    image[:10], image[10:] = RED, BLUE  # top red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(image).save(tmp_path / "turned.png", exif=exif)
    out = D.decode_image(str(tmp_path / "turned.png"), 10).transpose(1, 2, 0)
    assert (out[:, 6:] == RED).all() and (out[:, :4] == BLUE).all()  # the top is on the right


def test_large_jpegs_are_decoded_at_a_reduced_scale(tmp_path, monkeypatch):
    from PIL import JpegImagePlugin

    path = save(tmp_path / "big.jpg", halves(800, 1200, RED, RED))
    real, sizes = JpegImagePlugin.JpegImageFile.draft, []

    def draft(self, mode, size):
        result = real(self, mode, size)
        sizes.append((size, self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", draft)
    out = D.decode_image(str(path), 32)
    assert sizes == [((48, 32), (150, 100))]  # asked: shorter side 32; got: an 1/8 scale decode
    assert solid(out, RED, tolerance=3)


def test_a_broken_image_names_the_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(DataError, match=f"{bad}: cannot be read as an image") as err:
        D.decode_image(str(bad), 8)
    one_line(err)


@pytest.mark.parametrize("pool", D.POOLS)
def test_pools_decode_as_this_process_does(tmp_path, monkeypatch, pool):
    paths = [str(save(tmp_path / f"{i}.png", noise(i, (9, 13, 3)))) for i in range(10)]
    order = np.random.default_rng(0).permutation(10)
    serial = D.decode_images(paths, 8, order, workers=1)
    monkeypatch.setattr(D, "SERIAL_BELOW", 0)
    monkeypatch.setattr(D, "CHUNK", 3)
    seen = []
    pooled = D.decode_images(paths, 8, order, workers=2, pool=pool, done=seen.append)
    assert np.array_equal(pooled, serial) and sum(seen) == 10 and len(seen) == 4
    assert np.array_equal(serial[order[4]], D.decode_image(paths[4], 8))
    (tmp_path / "7.png").write_bytes(b"broken")
    with pytest.raises(DataError, match="7.png: cannot be read"):
        D.decode_images(paths, 8, workers=2, pool=pool)
