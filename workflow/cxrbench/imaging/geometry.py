"""Resizing: the study's square quadratic-spline zoom and an aspect-preserving anti-aliased resize.

Both resizes are separable linear maps, so each is one small banded matrix per axis. The matrices are
taken from the reference libraries themselves (``scipy.ndimage.zoom(order=2)`` for ``paper``, Pillow's
anti-aliased Lanczos for ``standard``) by resizing a "comb" of unit impulses spaced further apart than the
kernel support, so every weight, boundary rule and coordinate convention is the library's own. Applying
them with two numba loops reads the integer source once, without a full-size float copy, which is what
makes a 3000x2500 -> 512 resize cost a few milliseconds instead of a few hundred.
"""

from __future__ import annotations

import functools
import logging
import math

import numba
import numpy as np
import scipy.ndimage as ndi
from PIL import Image

_logger = logging.getLogger(__name__)

__all__ = ["axis_operator", "output_shape", "pad_to_square", "paper_resize", "standard_resize"]

# Weights below this fraction of a row's largest weight are dropped (the quadratic spline's prefilter is
# an infinite impulse response decaying as 0.17^k; 1e-9 keeps errors far below one 16-bit level).
_TRIM = 1e-9


def output_shape(mode: str, rows: int, cols: int, size: int) -> tuple[int, int]:
    """(rows, cols) of the resized image before padding: square for paper, aspect kept for standard."""
    if mode == "paper":
        return size, size
    scale = size / max(rows, cols)
    return max(1, round(rows * scale)), max(1, round(cols * scale))


def _apply_1d(kind: str, comb: np.ndarray, n_out: int) -> np.ndarray:
    """Resize axis 0 of ``comb`` (n_in x P) to n_out with the reference library; axis 1 is untouched."""
    n_in = comb.shape[0]
    if kind == "spline2":
        return ndi.zoom(comb, (n_out / n_in, 1.0), order=2)
    if kind == "lanczos":
        im = Image.fromarray(comb.astype(np.float32), mode="F")
        return np.asarray(im.resize((comb.shape[1], n_out), Image.Resampling.LANCZOS), dtype=np.float64)
    raise ValueError(f"unknown resize kind {kind!r}")


def _support(kind: str, n_in: int, n_out: int) -> int:
    """Half-width (input pixels) outside which the library's weights are negligible."""
    scale = max(n_in / n_out, 1.0)
    if kind == "spline2":
        return math.ceil(2 * scale) + 28  # IIR prefilter tail: 0.1716^28 < 1e-21
    return math.ceil(3 * scale) + 3  # Lanczos-3 stretched by the downscale factor


@functools.lru_cache(maxsize=512)
def axis_operator(kind: str, n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Banded resize matrix of one axis as (starts[n_out] int64, weights[n_out, T] float32)."""
    half = _support(kind, n_in, n_out)
    period = min(n_in, 2 * half + 2)
    comb = np.zeros((n_in, period))
    comb[np.arange(n_in), np.arange(n_in) % period] = 1.0
    resp = _apply_1d(kind, comb, n_out)  # (n_out, period): resp[o, j] = sum of M[o, k] over k = j mod period
    if kind == "spline2":
        centre = np.arange(n_out) * ((n_in - 1) / max(n_out - 1, 1))
    else:
        centre = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    lo = np.clip(np.round(centre).astype(np.int64) - period // 2, 0, n_in - period)
    k = lo[:, None] + np.arange(period)[None, :]
    dense = np.take_along_axis(resp, k % period, axis=1)  # (n_out, period): M[o, lo[o] + t]
    mask = np.abs(dense) > _TRIM * np.abs(dense).max(axis=1, keepdims=True)
    first = mask.argmax(axis=1)
    last = period - 1 - mask[:, ::-1].argmax(axis=1)
    width = int((last - first).max()) + 1
    first = np.minimum(first, period - width)
    idx = first[:, None] + np.arange(width)[None, :]
    weights = np.take_along_axis(dense, idx, axis=1).astype(np.float32)
    starts = (lo + first).astype(np.int64)
    return starts, np.ascontiguousarray(weights)


@numba.njit(cache=True, nogil=True, fastmath=False)
def _rows_pass(img, starts, weights):  # pragma: no cover - compiled
    n_out, width = weights.shape
    cols = img.shape[1]
    out = np.zeros((n_out, cols), dtype=np.float32)
    for o in range(n_out):
        s = starts[o]
        for t in range(width):
            w = weights[o, t]
            src = img[s + t]
            dst = out[o]
            for j in range(cols):
                dst[j] += w * np.float32(src[j])
    return out


@numba.njit(cache=True, nogil=True, fastmath=False)
def _cols_pass(img, starts, weights):  # pragma: no cover - compiled
    n_out, width = weights.shape
    rows = img.shape[0]
    out = np.empty((rows, n_out), dtype=np.float32)
    for r in range(rows):
        src = img[r]
        for o in range(n_out):
            s = starts[o]
            acc = np.float32(0.0)
            for t in range(width):
                acc += weights[o, t] * src[s + t]
            out[r, o] = acc
    return out


def _separable(kind: str, img: np.ndarray, out_rows: int, out_cols: int) -> np.ndarray:
    rs, rw = axis_operator(kind, img.shape[0], out_rows)
    cs, cw = axis_operator(kind, img.shape[1], out_cols)
    return _cols_pass(_rows_pass(np.ascontiguousarray(img), rs, rw), cs, cw)


def paper_resize(img: np.ndarray, size: int) -> np.ndarray:
    """The study's ``scipy.ndimage.zoom(img, (size/h, size/w), order=2)``, same dtype semantics.

    Integer inputs come back as the same integer dtype, rounded half up and clipped like scipy's
    integer output (the study zoomed the raw uint8/uint16 array); float inputs come back as float32.
    """
    out = _separable("spline2", img, size, size)
    if np.issubdtype(img.dtype, np.integer):
        info = np.iinfo(img.dtype)
        if img.dtype.itemsize >= 4:  # float32 cannot hold 32-bit bounds (2^32 - 1 rounds up and the cast overflows)
            out = out.astype(np.float64)
        out = np.clip(np.floor(out + 0.5), min(0, info.min), info.max).astype(img.dtype)
    return out


def standard_resize(img: np.ndarray, size: int) -> np.ndarray:
    """Aspect-preserving anti-aliased (Lanczos-3, Pillow's kernel) resize so the long side is ``size``; float32."""
    rows, cols = output_shape("standard", img.shape[0], img.shape[1], size)
    return _separable("lanczos", img, rows, cols)


def pad_to_square(img: np.ndarray, size: int, *, value: int = 0) -> np.ndarray:
    """Centre ``img`` on a ``size`` x ``size`` canvas filled with ``value`` (black by default)."""
    rows, cols = img.shape
    if rows > size or cols > size:
        raise ValueError(f"image {img.shape} does not fit a {size}x{size} canvas")
    canvas = np.full((size, size), value, dtype=img.dtype)
    top, left = (size - rows) // 2, (size - cols) // 2
    canvas[top : top + rows, left : left + cols] = img
    return canvas
