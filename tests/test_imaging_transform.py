"""Resize, intensity and PNG writing against their reference libraries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
from cxrbench.imaging.decode import UnusableImage
from cxrbench.imaging.geometry import output_shape, pad_to_square, paper_resize, standard_resize
from cxrbench.imaging.intensity import equalize_hist, minmax_to_uint8, percentile_to_unit
from cxrbench.imaging.write import read_png, write_png
from PIL import Image


@pytest.mark.parametrize(
    ("shape", "size", "dtype"),
    [((300, 250), 64, np.uint16), ((100, 90), 224, np.uint8), ((512, 480), 96, np.uint8), ((37, 53), 16, np.uint16)],
)
def test_paper_resize_matches_scipy_zoom_order2(shape, size, dtype) -> None:
    rng = np.random.default_rng(1)
    img = (rng.random(shape) * (4095 if dtype == np.uint16 else 255)).astype(dtype)
    ref = ndi.zoom(img, (size / shape[0], size / shape[1]), order=2)  # the study's call
    mine = paper_resize(img, size)
    assert mine.dtype == ref.dtype and mine.shape == ref.shape
    diff = np.abs(mine.astype(int) - ref.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.002  # float32 vs float64 rounding at exact .5 ties


def test_standard_resize_matches_pillow_lanczos_and_keeps_aspect() -> None:
    rng = np.random.default_rng(2)
    img = (rng.random((300, 200)) * 4095).astype(np.uint16)
    rows, cols = output_shape("standard", 300, 200, 60)
    assert (rows, cols) == (60, 40)
    ref = np.asarray(Image.fromarray(img.astype(np.float32), "F").resize((cols, rows), Image.Resampling.LANCZOS))
    assert np.abs(standard_resize(img, 60) - ref).max() < 1e-2
    padded = pad_to_square(np.ones((60, 40), np.uint8), 60)
    assert padded.shape == (60, 60) and padded[:, :10].max() == 0 and padded[:, 10:50].min() == 1


def test_minmax_matches_skimage_img_as_ubyte() -> None:
    skimage = pytest.importorskip("skimage.util")
    rng = np.random.default_rng(3)
    img = rng.integers(100, 4000, (50, 50)).astype(np.uint16)
    ref = skimage.img_as_ubyte((img - img.min()) / (img.max() - img.min()))
    assert np.array_equal(minmax_to_uint8(img), ref)
    with pytest.raises(UnusableImage, match="constant_image"):
        minmax_to_uint8(np.full((4, 4), 7, np.uint16))


def test_equalize_hist_is_opencvs_mapping() -> None:
    # Worked by hand from OpenCV's equalizeHist: levels 10 (x4), 20 (x2), 30 (x2); N=8, first level count 4:
    # scale = 255/4; lut[10] = 0, lut[20] = round(2*63.75) = 128 (127.5 -> even), lut[30] = 255.
    img = np.array([[10, 10, 10, 10, 20, 20, 30, 30]], np.uint8)
    assert equalize_hist(img).tolist() == [[0, 0, 0, 0, 128, 128, 255, 255]]
    flat = np.full((3, 3), 9, np.uint8)
    assert np.array_equal(equalize_hist(flat), flat)
    rng = np.random.default_rng(4)
    out = equalize_hist(rng.integers(40, 90, (64, 64)).astype(np.uint8))
    assert out.min() == 0 and out.max() == 255


def test_percentile_window_ignores_outliers() -> None:
    img = np.linspace(0, 1000, 10000).reshape(100, 100)
    img[0, 0] = 1e6
    unit = percentile_to_unit(img)
    assert unit.max() == 1.0 and unit[50, 50] == pytest.approx(0.5, abs=0.01)


def test_png_is_grey_8bit_without_metadata(tmp_path: Path) -> None:
    img = np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8)
    write_png(tmp_path / "a.png", img)
    data = (tmp_path / "a.png").read_bytes()
    chunks, i = [], 8
    while i < len(data):
        length = int.from_bytes(data[i : i + 4], "big")
        chunks.append(data[i + 4 : i + 8].decode())
        i += 12 + length
    assert set(chunks) == {"IHDR", "IDAT", "IEND"}
    assert np.array_equal(read_png(tmp_path / "a.png"), img)
    assert not list(tmp_path.glob(".*.tmp"))
