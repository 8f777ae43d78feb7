"""The paired bootstrap of the test set: seeded shared indices and a vectorised weighted-rank AUROC.

A resample is represented by multiplicity weights (how often each test image was drawn). Scores are
sorted once per (model, label) — not once per resample — and one sweep over the sorted scores updates
all B resamples at once (a contiguous loop over resamples per image), summing weights per tie group.
That is the exact Mann-Whitney AUROC with ties counted as 1/2, identical to ``roc_auc_score`` on the
resampled arrays. Youden thresholds come from the same sweep: refitted per resample (``study`` mode)
or fixed (``validation`` mode).

Indices are drawn as ``numpy.random.default_rng(seed).integers(0, n_units, size=(B, n_units))`` —
the draw ``scipy.stats.bootstrap`` makes — over images, or over patients for the clustered bootstrap
(an image then counts as often as its patient was drawn).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numba
import numpy as np

from cxrbench.evaluation.metrics import UndefinedMetricWarning, threshold_metrics

_logger = logging.getLogger(__name__)

__all__ = [
    "BootstrapResult",
    "bootstrap_runs",
    "draw_indices",
    "macro_over",
    "summarise",
    "unit_weights",
]


def draw_indices(n_units: int, *, n_resamples: int, seed: int) -> np.ndarray:
    """(B, n_units) int64 resampling indices with replacement (the same draw as scipy.stats.bootstrap)."""
    if n_units < 1:
        raise ValueError("cannot bootstrap an empty test set")
    return np.random.default_rng(seed).integers(0, n_units, size=(n_resamples, n_units))


def unit_weights(indices: np.ndarray, unit_of_image: np.ndarray, n_units: int) -> np.ndarray:
    """(B, N) multiplicity of every image in every resample (for checks and small data; the kernel
    computes the same weights one resample at a time)."""
    counts = np.stack([np.bincount(row, minlength=n_units) for row in indices])
    return counts[:, unit_of_image]


@numba.njit(cache=True, parallel=True)
def _multiplicities(indices: np.ndarray, n_units: int, out: np.ndarray) -> None:
    """``out[b, u]`` = how often unit ``u`` was drawn in resample ``b`` (row-wise: cache friendly)."""
    for b in numba.prange(indices.shape[0]):
        row = out[b]
        for u in indices[b]:
            row[u] += 1


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _kernel(
    counts: np.ndarray,
    img: np.ndarray,
    pos: np.ndarray,
    score: np.ndarray,
    offsets: np.ndarray,
    fixed: np.ndarray,
    refit: bool,
) -> np.ndarray:
    """(B, M, L, 6) results: auroc, threshold, tp, fp, tn, fn per resample, model and label.

    ``counts`` is (N, B): the multiplicity of each image in each resample, so every step of the sweep
    over one label's sorted images is a contiguous, SIMD-friendly loop over the B resamples. Tasks
    are (model, label) pairs; they are independent, so the thread count never changes a number.
    Weighted counts are integers (halves in the AUROC numerator), exact in float64.
    """
    n_res = counts.shape[1]
    n_models, n_labels = offsets.shape[0], offsets.shape[1] - 1
    out = np.empty((n_res, n_models, n_labels, 6))
    for task in numba.prange(n_models * n_labels):
        m, lab = task // n_labels, task % n_labels
        start, end = offsets[m, lab], offsets[m, lab + 1]
        n_pos = np.zeros(n_res)
        n_neg = np.zeros(n_res)
        if refit:  # Youden's J needs each resample's class totals before the sweep
            for k in range(start, end):
                row = counts[img[k]]
                if pos[k]:
                    for b in range(n_res):
                        n_pos[b] += row[b]
                else:
                    for b in range(n_res):
                        n_neg[b] += row[b]
        tp = np.zeros(n_res)
        fp = np.zeros(n_res)
        g_pos = np.zeros(n_res)
        g_neg = np.zeros(n_res)
        num = np.zeros(n_res)  # sum over negatives of (#positives scored higher + 0.5 * #tied positives)
        best_j = np.zeros(n_res)
        best_thr = np.full(n_res, np.inf)  # sklearn's first ROC point: threshold +inf, J = 0
        best_tp = np.zeros(n_res)
        best_fp = np.zeros(n_res)
        t_fixed = fixed[m, lab]
        group_has_pos = False
        for k in range(start, end):
            row = counts[img[k]]
            if pos[k]:
                group_has_pos = True
                for b in range(n_res):
                    g_pos[b] += row[b]
            else:
                for b in range(n_res):
                    g_neg[b] += row[b]
            if k < end - 1 and score[k] == score[k + 1]:
                continue  # inside a tie group
            for b in range(n_res):
                num[b] += g_neg[b] * (tp[b] + 0.5 * g_pos[b])
                tp[b] += g_pos[b]
                fp[b] += g_neg[b]
                g_pos[b] = 0.0
                g_neg[b] = 0.0
            s = score[k]
            if refit:
                if not group_has_pos:
                    continue  # tp unchanged, fp not smaller: J cannot exceed its maximum so far
                group_has_pos = False
                for b in range(n_res):
                    j = tp[b] / n_pos[b] - fp[b] / n_neg[b]  # the operations of sklearn's tpr - fpr
                    better = j > best_j[b]  # first maximum wins, as np.argmax; NaN (one class) never
                    best_j[b] = j if better else best_j[b]
                    best_thr[b] = s if better else best_thr[b]
                    best_tp[b] = tp[b] if better else best_tp[b]
                    best_fp[b] = fp[b] if better else best_fp[b]
            elif s >= t_fixed and (k == end - 1 or score[k + 1] < t_fixed):
                for b in range(n_res):  # last tie group predicted positive
                    best_tp[b] = tp[b]
                    best_fp[b] = fp[b]
        for b in range(n_res):
            p_tot = n_pos[b] if refit else tp[b]
            n_tot = n_neg[b] if refit else fp[b]
            r = out[b, m, lab]
            if p_tot == 0 or n_tot == 0:
                r[0] = np.nan
                if refit:  # no Youden threshold exists either
                    r[1:] = np.nan
                    continue
            else:
                r[0] = num[b] / (p_tot * n_tot)
            r[1] = best_thr[b] if refit else t_fixed
            r[2] = best_tp[b]
            r[3] = best_fp[b]
            r[4] = n_tot - best_fp[b]
            r[5] = p_tot - best_tp[b]
    return out


def _sorted_layout(targets: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate, per (model, label), the unmasked images in descending score order."""
    n_models, _, n_labels = scores.shape
    imgs, poss, scs = [], [], []
    offsets = np.zeros((n_models, n_labels + 1), np.int64)
    total = 0
    for m in range(n_models):
        offsets[m, 0] = total
        for j in range(n_labels):
            keep = np.flatnonzero(~np.isnan(targets[m, :, j]))
            order = keep[np.argsort(-scores[m, keep, j], kind="stable")]
            imgs.append(order)
            poss.append(targets[m, order, j] == 1.0)
            scs.append(scores[m, order, j])
            total += order.size
            offsets[m, j + 1] = total
    # label j of model m occupies [offsets[m, j], offsets[m, j + 1]) of the concatenated arrays
    return (np.concatenate(imgs), np.concatenate(poss), np.concatenate(scs), offsets)


@dataclass(frozen=True)
class BootstrapResult:
    """Per-resample results of M models on L labels: arrays of shape (B, M, L)."""

    auroc: np.ndarray
    threshold: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    tn: np.ndarray
    fn: np.ndarray

    def threshold_metrics(self) -> dict[str, np.ndarray]:
        """Accuracy, sensitivity, specificity, F1 per resample, (B, M, L) each."""
        return threshold_metrics(self.tp, self.fp, self.tn, self.fn)


def bootstrap_runs(
    targets: np.ndarray,
    scores: np.ndarray,
    indices: np.ndarray,
    *,
    unit_of_image: np.ndarray | None = None,
    thresholds: np.ndarray | None = None,
) -> BootstrapResult:
    """Paired bootstrap of M models on the same N test images.

    Args:
        targets: (M, N, L) float, 1/0/NaN (NaN = masked for that label); (N, L) for one model.
        scores: (M, N, L) float, same shape as ``targets``.
        indices: (B, U) resampling indices over units (images, or patients when clustered).
        unit_of_image: (N,) unit of each image; None = images are the units (U = N).
        thresholds: (M, L) fixed thresholds (``validation`` mode; NaN gives NaN counts), or None to
            refit Youden's J on every resample (``study`` mode).
    """
    targets = np.asarray(targets, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if targets.ndim == 2:
        targets, scores = targets[None], scores[None]
        thresholds = None if thresholds is None else np.asarray(thresholds, dtype=np.float64)[None]
    if targets.shape != scores.shape:
        raise ValueError(f"targets {targets.shape} and scores {scores.shape} differ in shape")
    n_models, n_img, n_labels = scores.shape
    if unit_of_image is None:
        unit_of_image = np.arange(n_img)
    unit_of_image = np.ascontiguousarray(unit_of_image, dtype=np.int64)
    if unit_of_image.shape != (n_img,):
        raise ValueError(f"unit_of_image has shape {unit_of_image.shape}, expected ({n_img},)")
    indices = np.ascontiguousarray(indices, dtype=np.int64)
    n_units = int(unit_of_image.max()) + 1
    if indices.size and (indices.min() < 0 or indices.max() >= n_units):
        raise ValueError(f"bootstrap indices outside [0, {n_units})")
    refit = thresholds is None
    fixed = np.full((n_models, n_labels), np.nan) if refit else np.asarray(thresholds, dtype=np.float64)
    if fixed.shape != (n_models, n_labels):
        raise ValueError(f"thresholds have shape {fixed.shape}, expected ({n_models}, {n_labels})")
    img, pos, sc, offsets = _sorted_layout(targets, scores)
    # Multiplicities per unit, then per image (an image counts as often as its unit was drawn); the
    # kernel wants them image-major so that the B resamples of one image are contiguous.
    per_unit = np.zeros((indices.shape[0], n_units), np.uint16 if n_units < 2**16 else np.uint32)
    _multiplicities(indices, n_units, per_unit)
    counts = np.ascontiguousarray(per_unit.T)
    if not np.array_equal(unit_of_image, np.arange(n_img)):
        counts = counts[unit_of_image]
    out = _kernel(counts, img, pos, sc, offsets, fixed, refit)
    if not refit:
        nan_thr = np.isnan(fixed)[None, :, :]  # a NaN threshold leaves thresholded metrics undefined
        out[..., 2:][np.broadcast_to(nan_thr, out.shape[:3])] = np.nan
    return BootstrapResult(*(out[..., k] for k in range(6)))


def macro_over(auroc: np.ndarray, columns: np.ndarray | list[int]) -> np.ndarray:
    """Per-resample macro mean over the given label columns of (B, L) AUROCs.

    A resample where any of those labels is undefined (one class drawn) gives NaN, so every macro
    value averages the same labels.
    """
    columns = np.asarray(columns, dtype=np.int64)
    if columns.size == 0:
        return np.full(auroc.shape[0], np.nan)
    return auroc[:, columns].mean(axis=1)


def summarise(values: np.ndarray, *, confidence: float = 0.95, context: str = "") -> dict[str, float]:
    """Mean, SD (ddof=1, as scipy's standard_error) and percentile CI over resamples, NaN resamples dropped.

    The percentile CI uses linear interpolation, as ``scipy.stats.bootstrap(method="percentile")``.
    """
    values = np.asarray(values, dtype=np.float64)
    ok = values[~np.isnan(values)]
    n_nan = values.size - ok.size
    if n_nan:
        msg = f"{context}{n_nan} of {values.size} resamples are undefined (one class drawn) and left out"
        warnings.warn(msg, UndefinedMetricWarning, stacklevel=2)
        _logger.warning(msg)
    if ok.size < 2:
        return {"mean": float("nan"), "sd": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"),
                "n_resamples": int(ok.size)}
    alpha = (1 - confidence) / 2
    lo, hi = np.percentile(ok, [100 * alpha, 100 * (1 - alpha)])
    return {"mean": float(ok.mean()), "sd": float(ok.std(ddof=1)), "ci_low": float(lo), "ci_high": float(hi),
            "n_resamples": int(ok.size)}
