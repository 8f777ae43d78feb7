"""One source image -> one standard 8-bit PNG array, in the ``paper`` or ``standard`` recipe."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrbench.imaging.decode import DecodedImage, SourceInfo, UnusableImage, decode
from cxrbench.imaging.geometry import pad_to_square, paper_resize, standard_resize
from cxrbench.imaging.intensity import (
    equalize_hist,
    invert_stored,
    minmax_to_uint8,
    percentile_to_unit,
    unit_to_uint8,
    voi_to_unit,
)

_logger = logging.getLogger(__name__)

__all__ = ["Recipe", "convert", "render"]

MODES = ("paper", "standard")


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the output pixels (the shard rule's settings)."""

    mode: str
    size: int
    equalize: bool = True  # paper mode only
    reduced_decode: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"preprocess mode must be one of {MODES}, got {self.mode!r}")
        if self.size < 1:
            raise ValueError(f"preprocess size must be positive, got {self.size}")


def render(decoded: DecodedImage, recipe: Recipe) -> tuple[np.ndarray, str]:
    """Return the ``size`` x ``size`` uint8 image and a short note of the intensity window used."""
    if recipe.mode == "paper":
        return _render_paper(decoded, recipe), "minmax"
    return _render_standard(decoded, recipe)


def _render_paper(decoded: DecodedImage, recipe: Recipe) -> np.ndarray:
    # Study order: MONOCHROME1 inverted as the DICOM -> PNG conversion did, before any resize -> zoom (square,
    # spline order 2) -> min-max -> uint8 -> equalise. Inverting before the zoom matters at the border, where
    # the spline writes zeros: after it they stay black for every source. A linear rescale cannot change a
    # min-max result, except a negative slope, which flips the grey scale like an inversion.
    pixels = decoded.pixels
    if decoded.invert != (decoded.rescale_slope < 0):
        pixels = invert_stored(pixels, decoded.info.bits_stored)[0]
    img = minmax_to_uint8(paper_resize(pixels, recipe.size))
    return equalize_hist(img) if recipe.equalize else img


def _render_standard(decoded: DecodedImage, recipe: Recipe) -> tuple[np.ndarray, str]:
    # MONOCHROME1 is mirrored on the stored range before the resize, in integers, with the rescale folded so
    # the modality values (what the VOI window acts on) are unchanged; the display inversion still follows
    # the VOI transform (DICOM's MONOCHROME1 definition). The resize then sees the same array for the same
    # image stored as MONOCHROME1 or MONOCHROME2, so float rounding cannot make their PNGs differ.
    pixels, slope, intercept = decoded.pixels, decoded.rescale_slope, decoded.rescale_intercept
    if decoded.invert:
        pixels, m = invert_stored(pixels, decoded.info.bits_stored)
        slope, intercept = -slope, intercept + slope * m  # x = m - p  =>  slope*x + b = -slope*p + (b + slope*m)
    # Resizing is linear, so it is done first on the stored values (cheap); rescale, window and inversion
    # then act on size^2 pixels. Windowing after the anti-aliased resize differs from the reverse order only
    # at clipped edges.
    values = standard_resize(pixels, recipe.size).astype(np.float64) * slope + intercept
    if decoded.has_voi:
        unit, window = voi_to_unit(values, decoded.voi), "voi"
    else:
        unit, window = percentile_to_unit(values), "percentile"
    if decoded.invert:
        unit = 1.0 - unit  # after the VOI transform, on its output range (DICOM's MONOCHROME1 definition)
    return pad_to_square(unit_to_uint8(unit), recipe.size), window


def convert(path: str | Path, recipe: Recipe) -> tuple[np.ndarray, SourceInfo, dict]:
    """Decode and render one file; returns (uint8 image, source facts, {window, reduction}).

    Raises:
        UnusableImage: when the file cannot become a PNG (the reason is quarantined by the caller); an
            unexpected exception becomes ``internal_error`` carrying the source facts learnt so far.
    """
    info = SourceInfo()
    try:
        # A size x size bound is exact for paper (square output) and conservative for standard, whose short
        # side is smaller: the decoder keeps >= the output resolution on both axes either way.
        decoded = decode(path, out_shape=(recipe.size, recipe.size), reduced=recipe.reduced_decode, info=info)
        if min(decoded.pixels.shape) < 2:
            raise UnusableImage("zero_size", f"decoded image is {decoded.pixels.shape}", info)
        img, window = render(decoded, recipe)
    except UnusableImage as exc:
        raise UnusableImage(exc.code, exc.detail, info) from None
    except (MemoryError, RecursionError):
        raise
    except Exception as exc:
        _logger.debug("internal error on %s", path, exc_info=True)
        raise UnusableImage("internal_error", f"{type(exc).__name__}: {exc}", info) from exc
    return img, info, {"window": window, "reduction": decoded.reduction}
