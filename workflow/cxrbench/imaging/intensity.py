"""Intensity mapping to 8 bit: the study's min-max + histogram equalisation, and DICOM/percentile windows.

NaN policy: inputs are finite pixel arrays (decoders never produce NaN); a constant image has no
contrast to normalise and is reported as unusable rather than written as a flat PNG.
"""

from __future__ import annotations

import logging

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_voi_lut

from cxrbench.imaging.decode import UnusableImage

_logger = logging.getLogger(__name__)

__all__ = ["equalize_hist", "invert_stored", "minmax_to_uint8", "percentile_to_unit", "unit_to_uint8", "voi_to_unit"]

# Robust window used when a file carries no VOI window: ignores collimator edges, labels and markers.
PERCENTILES = (0.5, 99.5)


def invert_stored(pixels: np.ndarray, bits_stored: int | None) -> tuple[np.ndarray, float]:
    """Mirror stored values on their stored range, exactly and in the same dtype; returns (``m - x``, ``m``).

    Unsigned: ``m = 2^BitsStored - 1`` (or the array maximum if stray high bits exceed it, so nothing wraps);
    signed two's complement: ``m = -1`` (``~x`` maps [-2^(b-1), 2^(b-1) - 1] onto itself); float: ``m = 0``.
    Integer arithmetic keeps the same image stored as MONOCHROME1 and as MONOCHROME2 bit-identical after it.
    """
    if np.issubdtype(pixels.dtype, np.signedinteger):
        return np.invert(pixels), -1.0
    if np.issubdtype(pixels.dtype, np.unsignedinteger):
        bits = bits_stored or pixels.dtype.itemsize * 8
        m = max(2**bits - 1, int(pixels.max()))
        return pixels.dtype.type(m) - pixels, float(m)
    return -pixels, 0.0


def minmax_to_uint8(img: np.ndarray) -> np.ndarray:
    """The study's per-image ``(x - min) / (max - min)`` then ``skimage.img_as_ubyte`` (round half to even)."""
    lo, hi = float(img.min()), float(img.max())
    if not hi > lo:
        raise UnusableImage("constant_image", f"every pixel equals {lo:g}: no contrast to normalise")
    unit = (img.astype(np.float64) - lo) / (hi - lo)
    return unit_to_uint8(unit)


def unit_to_uint8(unit: np.ndarray) -> np.ndarray:
    """Map [0, 1] to 0..255 as ``img_as_ubyte`` does (multiply by 255, round half to even, clip)."""
    return np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)


def equalize_hist(img: np.ndarray) -> np.ndarray:
    """Global histogram equalisation with OpenCV's ``equalizeHist`` mapping (the study's call).

    OpenCV maps grey level ``g`` to ``round(255 * (cdf[g] - cdf[g0]) / (N - cdf[g0]))`` where ``g0`` is the
    darkest occupied level (so it maps to 0), rounding half to even; a constant image is returned as is.
    """
    if img.dtype != np.uint8:
        raise TypeError(f"equalize_hist needs uint8, got {img.dtype}")
    hist = np.bincount(img.ravel(), minlength=256)
    g0 = int(np.flatnonzero(hist)[0])
    total = img.size
    if hist[g0] == total:
        return img.copy()
    cdf = np.cumsum(hist)
    scale = np.float32(255.0) / np.float32(total - hist[g0])  # OpenCV computes the scale in float
    lut = np.rint((cdf - cdf[g0]).astype(np.float32) * scale)
    lut[:g0] = 0
    return np.clip(lut, 0, 255).astype(np.uint8)[img]


def _voi_range(voi: Dataset) -> tuple[float, float]:
    """Output range of pydicom's ``apply_voi_lut`` for this dataset (the range MONOCHROME1 inverts on)."""
    if "VOILUTSequence" in voi:
        bits = int(voi.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    bits = int(voi.get("BitsStored", 16))
    if int(voi.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = voi.get("RescaleSlope"), voi.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = sorted((lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)))
    return lo, hi


def voi_to_unit(values: np.ndarray, voi: Dataset) -> np.ndarray:
    """Apply the file's first VOI LUT or window (pydicom) to modality values and scale its output to [0, 1]."""
    out = apply_voi_lut(values.astype(np.float64), voi, index=0, prefer_lut=True)
    lo, hi = _voi_range(voi)
    return np.clip((out - lo) / (hi - lo), 0.0, 1.0)


def percentile_to_unit(values: np.ndarray, *, percentiles: tuple[float, float] = PERCENTILES) -> np.ndarray:
    """Window between two percentiles of the image and scale to [0, 1] (values outside are clipped)."""
    lo, hi = np.percentile(values, percentiles)
    if not hi > lo:
        lo, hi = float(values.min()), float(values.max())
        if not hi > lo:
            raise UnusableImage("constant_image", f"every pixel equals {lo:g}: no contrast to window")
    return np.clip((values.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)
