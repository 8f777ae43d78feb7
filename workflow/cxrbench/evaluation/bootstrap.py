"""The paired bootstrap of the test set: seeded shared indices and a vectorised weighted-rank AUROC.

A resample is represented by multiplicity weights (how often each test image was drawn). Scores are
sorted and cut into tie groups once per (model, label) — not once per resample. Resamples are taken
in blocks of 64: a block's multiplicities are counted once (one byte per unit and resample, so a
unit's row is one cache line) and shared by every (model, label), whose sweep over its tie groups
adds the rows of each group's images to integer accumulators for the 64 resamples at once. That is
the exact Mann-Whitney AUROC with ties counted as 1/2 (the numerator kept as integers), equal to
``roc_auc_score`` on the resampled arrays to rounding. Youden thresholds come from the same sweep:
refitted per resample (``study`` mode, with each resample's class totals summed beforehand from the
rarer class) or fixed (``validation`` mode).

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
    computes the same weights one block of resamples at a time)."""
    counts = np.stack([np.bincount(row, minlength=n_units) for row in indices])
    return counts[:, unit_of_image]


# Resamples per block: a block's multiplicities (units x _WIDTH, one byte each) are built by one
# thread and shared by every (model, label) sweep; a unit's row is then one 64-byte cache line.
_WIDTH = 64
# Youden's J only needs evaluating at the last of consecutive groups with positives and without
# negatives after the first: fp stays put, so J cannot fall along them, and its first maximum there
# is where tp last grew (distinct tp give distinct float J), which the sweep tracks per resample.
_EVAL = 4
_OVERFLOW, _OUTSIDE = 1, 2  # block status (the worst wins): a count past the count dtype; an index outside the units


@numba.njit(cache=True)
def _tie_groups(
    score: np.ndarray, pos: np.ndarray, rows: np.ndarray, offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Tie groups of every (model, label) in the sorted layout: ends, first negatives, kinds, offsets.

    Reorders each group's images (``pos`` and ``rows`` in place) positives first, so that a sweep
    adds each class's rows in one branch-free run. ``kind`` has bit 1 set when the group holds a
    positive, bit 2 when it holds a negative, and ``_EVAL`` when it holds a positive and the next
    group a negative (or there is none).
    """
    n_models, n_labels = offsets.shape[0], offsets.shape[1] - 1
    ends = np.empty(score.shape[0], np.int64)
    mids = np.empty(score.shape[0], np.int64)
    kinds = np.empty(score.shape[0], np.uint8)
    goff = np.zeros((n_models, n_labels + 1), np.int64)
    neg_rows = np.empty(score.shape[0], rows.dtype)
    n = 0
    for m in range(n_models):
        goff[m, 0] = n
        for lab in range(n_labels):
            start, end = offsets[m, lab], offsets[m, lab + 1]
            k0 = start
            for k in range(start, end):
                if k < end - 1 and score[k] == score[k + 1]:
                    continue
                n_pos = n_neg = 0
                for i in range(k0, k + 1):  # stable partition: positives first
                    if pos[i]:
                        rows[k0 + n_pos] = rows[i]
                        n_pos += 1
                    else:
                        neg_rows[n_neg] = rows[i]
                        n_neg += 1
                rows[k0 + n_pos:k + 1] = neg_rows[:n_neg]
                pos[k0:k0 + n_pos] = True
                pos[k0 + n_pos:k + 1] = False
                ends[n] = k + 1
                mids[n] = k0 + n_pos
                kinds[n] = (1 if n_pos else 0) | (2 if n_neg else 0)
                n += 1
                k0 = k + 1
            goff[m, lab + 1] = n
            for g in range(goff[m, lab], n):  # where Youden's J must be evaluated: see _EVAL
                if kinds[g] & 1 and (g == n - 1 or kinds[g + 1] & 2):
                    kinds[g] |= _EVAL
    return ends[:n], mids[:n], kinds[:n], goff


@numba.njit(cache=True)
def _add_rows(acc: np.ndarray, cnt: np.ndarray, rows: np.ndarray, k0: int, k1: int, wb: int) -> None:
    """``acc[:wb] += cnt[rows[k]][:wb]`` for k in [k0, k1), four rows per pass.

    Four rows summed in a wider type before touching ``acc`` quarter its loads and stores and keep
    four independent (random) row loads in flight.
    """
    k = k0
    while k + 4 <= k1:
        r0, r1, r2, r3 = cnt[rows[k]], cnt[rows[k + 1]], cnt[rows[k + 2]], cnt[rows[k + 3]]
        for bb in range(wb):
            acc[bb] += (np.uint32(r0[bb]) + np.uint32(r1[bb])) + (np.uint32(r2[bb]) + np.uint32(r3[bb]))
        k += 4
    while k < k1:
        r0 = cnt[rows[k]]
        for bb in range(wb):
            acc[bb] += r0[bb]
        k += 1


@numba.njit(cache=True)
def _block_counts(indices: np.ndarray, b0: int, wb: int, cap: int, cnt: np.ndarray, scratch: np.ndarray) -> int:
    """``cnt[u, bb]`` = how often unit ``u`` was drawn in resample ``b0 + bb``.

    Returns 0, or ``_OUTSIDE`` for an index outside [0, units), or ``_OVERFLOW`` for a count that
    would pass ``cap``. Counting into one resample's row of ``scratch`` (resample-major, cache
    resident) and then transposing is several times faster than incrementing ``cnt`` in place,
    where every draw would touch a random cache line of the whole block; the transpose writes
    ``cnt`` row by row and reads ``scratch`` in 64-unit tiles that stay in cache.
    """
    n_units = cnt.shape[0]
    scratch[:wb] = 0
    status = 0
    for bb in range(wb):
        srow = scratch[bb]
        for u in indices[b0 + bb]:
            if u < 0 or u >= n_units:
                return _OUTSIDE
            c = srow[u]
            if c == cap:
                status = _OVERFLOW
            srow[u] = c + 1
    for u0 in range(0, n_units, 64):
        for u in range(u0, min(u0 + 64, n_units)):
            crow = cnt[u]
            for bb in range(wb):
                crow[bb] = scratch[bb, u]
    return status


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _kernel(
    indices: np.ndarray,
    unit_size: np.ndarray,
    cap: int,
    count_proto: np.ndarray,
    acc_proto: np.ndarray,
    rows: np.ndarray,
    score: np.ndarray,
    offsets: np.ndarray,
    gend: np.ndarray,
    gmid: np.ndarray,
    gkind: np.ndarray,
    goff: np.ndarray,
    trows: np.ndarray,
    tseg: np.ndarray,
    tmode: np.ndarray,
    fixed: np.ndarray,
    refit: bool,
) -> tuple[np.ndarray, int]:
    """(B, M, L, 6) results: auroc, threshold, tp, fp, tn, fn per resample, model and label; status.

    Blocks of ``_WIDTH`` resamples are independent tasks (so the thread count never changes a number).
    A block first counts how often each unit was drawn (``cnt``: units x width, dtype of
    ``count_proto``; see ``_block_counts`` for the status), then sweeps every (model, label)
    over its tie groups in descending score order, adding the drawn multiplicities of each group's
    units to unsigned integer accumulators (dtype of ``acc_proto``) in contiguous loops over the
    block's resamples. Everything is an exact integer until the final divisions, which are the ones
    sklearn makes; unsigned types throughout keep Numba from promoting mixed signs to float.
    """
    n_res = indices.shape[0]
    n_units = unit_size.shape[0]
    n_models, n_labels = offsets.shape[0], offsets.shape[1] - 1
    n_blocks = (n_res + _WIDTH - 1) // _WIDTH
    out = np.empty((n_res, n_models, n_labels, 6))
    status = np.zeros(n_blocks, np.int64)
    sized = refit and np.any(unit_size != 1)  # else a resample draws as many images as units
    for blk in numba.prange(n_blocks):
        b0 = blk * _WIDTH
        wb = min(_WIDTH, n_res - b0)
        cnt = np.empty((n_units, _WIDTH), count_proto.dtype)
        scratch = np.empty((_WIDTH, n_units), count_proto.dtype)
        status[blk] = _block_counts(indices, b0, wb, cap, cnt, scratch)
        if status[blk]:
            continue
        total = np.zeros(_WIDTH, acc_proto.dtype)  # images drawn per resample
        for bb in range(wb):
            if sized:
                t = np.uint64(0)
                for u in range(n_units):
                    t += np.uint64(scratch[bb, u]) * np.uint64(unit_size[u])
                total[bb] = t
            else:
                total[bb] = indices.shape[1]
        tp = np.zeros(_WIDTH, acc_proto.dtype)
        fp = np.zeros(_WIDTH, acc_proto.dtype)
        gp = np.zeros(_WIDTH, acc_proto.dtype)
        gn = np.zeros(_WIDTH, acc_proto.dtype)
        gz = np.zeros(_WIDTH, acc_proto.dtype)
        # AUROC numerator = num_a + num_b / 2: sum over negatives of the positives above (num_a)
        # and of the tied positives (num_b); kept apart so that both stay integers
        num_a = np.zeros(_WIDTH, np.uint64)
        num_b = np.zeros(_WIDTH, np.uint64)
        n_pos = np.zeros(_WIDTH)
        n_neg = np.zeros(_WIDTH)
        best_j = np.zeros(_WIDTH)
        best_thr = np.zeros(_WIDTH)
        grew_at = np.zeros(_WIDTH)  # score of the last group where tp grew
        tp_before = np.zeros(_WIDTH, acc_proto.dtype)
        best_tp = np.zeros(_WIDTH, acc_proto.dtype)
        best_fp = np.zeros(_WIDTH, acc_proto.dtype)
        for task in range(n_models * n_labels):
            m, lab = task // n_labels, task % n_labels
            start, end = offsets[m, lab], offsets[m, lab + 1]
            tp[:] = 0
            fp[:] = 0
            num_a[:] = 0
            num_b[:] = 0
            best_j[:] = 0.0
            best_thr[:] = np.inf  # sklearn's first ROC point: threshold +inf, J = 0
            tp_before[:] = 0
            best_tp[:] = 0
            best_fp[:] = 0
            if refit:  # Youden's J needs each resample's class totals before the sweep
                gp[:] = 0
                gn[:] = 0
                gz[:] = 0
                seg = tseg[m, lab]
                _add_rows(gp, cnt, trows, seg[0], seg[1], wb)
                _add_rows(gn, cnt, trows, seg[1], seg[2], wb)
                _add_rows(gz, cnt, trows, seg[2], seg[3], wb)
                mode = tmode[m, lab]
                for bb in range(wb):  # the class not summed is what the rest of the kept draws leaves
                    kept = total[bb] - gz[bb]
                    n_pos[bb] = gp[bb] if mode != 2 else kept - gn[bb]
                    n_neg[bb] = gn[bb] if mode != 1 else kept - gp[bb]
            t_fixed = fixed[m, lab]
            k0 = start
            for g in range(goff[m, lab], goff[m, lab + 1]):
                k1 = gend[g]
                kind = gkind[g]
                if (kind & 3) == 1:  # positives only: no negative is tied with them
                    _add_rows(tp, cnt, rows, k0, k1, wb)
                elif k1 - k0 == 1:  # one negative
                    row = cnt[rows[k0]]
                    for bb in range(wb):
                        num_a[bb] += np.uint64(row[bb]) * np.uint64(tp[bb])
                        fp[bb] += row[bb]
                else:
                    gp[:wb] = 0
                    gn[:wb] = 0
                    _add_rows(gp, cnt, rows, k0, gmid[g], wb)
                    _add_rows(gn, cnt, rows, gmid[g], k1, wb)
                    for bb in range(wb):
                        num_a[bb] += np.uint64(gn[bb]) * np.uint64(tp[bb])
                        num_b[bb] += np.uint64(gn[bb]) * np.uint64(gp[bb])
                        tp[bb] += gp[bb]
                        fp[bb] += gn[bb]
                s = score[k1 - 1]
                if refit:
                    if kind & 1:  # without a positive, tp is unchanged and fp not smaller: no new maximum
                        for bb in range(wb):
                            grew_at[bb] = s if tp[bb] != tp_before[bb] else grew_at[bb]
                            tp_before[bb] = tp[bb]
                    if kind & _EVAL:
                        for bb in range(wb):
                            j = tp[bb] / n_pos[bb] - fp[bb] / n_neg[bb]  # the operations of sklearn's tpr - fpr
                            better = j > best_j[bb]  # first maximum wins, as np.argmax; NaN (one class) never
                            best_j[bb] = j if better else best_j[bb]
                            best_thr[bb] = grew_at[bb] if better else best_thr[bb]
                            best_tp[bb] = tp[bb] if better else best_tp[bb]
                            best_fp[bb] = fp[bb] if better else best_fp[bb]
                elif s >= t_fixed and (k1 == end or score[k1] < t_fixed):
                    for bb in range(wb):  # last tie group predicted positive
                        best_tp[bb] = tp[bb]
                        best_fp[bb] = fp[bb]
                k0 = k1
            for bb in range(wb):
                p_tot = n_pos[bb] if refit else np.float64(tp[bb])
                n_tot = n_neg[bb] if refit else np.float64(fp[bb])
                r = out[b0 + bb, m, lab]
                if p_tot == 0 or n_tot == 0:
                    r[0] = np.nan
                    if refit:  # no Youden threshold exists either
                        r[1:] = np.nan
                        continue
                else:  # both parts are exact in float64 (below 2**53), so is their sum
                    r[0] = (np.float64(num_a[bb]) + 0.5 * np.float64(num_b[bb])) / (p_tot * n_tot)
                r[1] = best_thr[bb] if refit else t_fixed
                r[2] = best_tp[bb]
                r[3] = best_fp[bb]
                r[4] = n_tot - best_fp[bb]
                r[5] = p_tot - best_tp[bb]
    return out, status.max() if n_blocks else 0


def _sorted_layout(targets: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate, per (model, label), the unmasked images in descending score order.

    One argsort of every (model, label) at once, masked images included, then dropping the masked
    ones. The order inside a tie group changes no result (the sweep sums over the group), so
    NumPy's fastest sort will do, except that NaN scores never tie: then a stable sort keeps their
    order that of the images.
    """
    n_models, _, n_labels = scores.shape
    nan_scored = bool(np.any(np.isnan(scores) & ~np.isnan(targets)))
    order = np.argsort(-np.ascontiguousarray(scores.transpose(0, 2, 1)), axis=2,
                       kind="stable" if nan_scored else None)  # (M, L, N)
    t = np.take_along_axis(targets.transpose(0, 2, 1), order, axis=2)
    kept = ~np.isnan(t)
    img = order[kept]  # C order: model-major, then label, then rank, as the offsets say
    pos = t[kept] == 1.0
    sc = np.take_along_axis(scores.transpose(0, 2, 1), order, axis=2)[kept]
    offsets = np.zeros((n_models, n_labels + 1), np.int64)
    n_kept = kept.sum(axis=2)
    offsets[:, 1:] = np.cumsum(n_kept, axis=1)
    offsets += np.concatenate(([0], np.cumsum(n_kept.sum(axis=1))[:-1]))[:, None]
    # label j of model m occupies [offsets[m, j], offsets[m, j + 1]) of the concatenated arrays
    return img, pos, sc, offsets


def _totals_layout(targets: np.ndarray, unit_of_image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which units' rows give each (model, label)'s class totals per resample, cheapest way.

    Either every kept image (mode 0), or the rarer class plus the masked images (mode 1: positives,
    mode 2: negatives), the other class being the rest of the resample's draws. Rows are listed
    positives, negatives, masked; ``tseg[m, j]`` holds the four boundaries of those runs.
    """
    n_models, _, n_labels = targets.shape
    trows = []
    tseg = np.zeros((n_models, n_labels, 4), np.int64)
    tmode = np.zeros((n_models, n_labels), np.int64)
    total = 0
    for m in range(n_models):
        for j in range(n_labels):
            t = targets[m, :, j]
            pos, masked = t == 1.0, np.isnan(t)
            neg = ~pos & ~masked
            n_pos, n_neg, n_masked = int(pos.sum()), int(neg.sum()), int(masked.sum())
            if min(n_pos, n_neg) + n_masked < n_pos + n_neg:
                tmode[m, j] = 1 if n_pos <= n_neg else 2
                parts = [pos, np.zeros_like(pos), masked] if n_pos <= n_neg else [np.zeros_like(pos), neg, masked]
            else:
                parts = [pos, neg, np.zeros_like(pos)]
            tseg[m, j, 0] = total
            for i, part in enumerate(parts):
                trows.append(unit_of_image[part])
                total += trows[-1].size
                tseg[m, j, i + 1] = total
    return np.concatenate(trows), tseg, tmode


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
    refit = thresholds is None
    fixed = np.full((n_models, n_labels), np.nan) if refit else np.asarray(thresholds, dtype=np.float64)
    if fixed.shape != (n_models, n_labels):
        raise ValueError(f"thresholds have shape {fixed.shape}, expected ({n_models}, {n_labels})")
    img, pos, sc, offsets = _sorted_layout(targets, scores)
    rows = unit_of_image[img]
    gend, gmid, gkind, goff = _tie_groups(sc, pos, rows, offsets)
    if refit:
        trows, tseg, tmode = _totals_layout(targets, unit_of_image)
    else:  # fixed thresholds take the class totals from the end of the sweep
        trows, tseg = np.zeros(0, np.int64), np.zeros((n_models, n_labels, 4), np.int64)
        tmode = np.zeros((n_models, n_labels), np.int64)
    unit_size = np.bincount(unit_of_image, minlength=n_units).astype(np.int64)
    # Accumulators hold at most a resample's image count: uint32 (twice the SIMD lanes of uint64)
    # whenever that is safe. (The AUROC numerator is exact in float64 below 2**53, as before: up to
    # about 9e7 images drawn per resample.)
    most = indices.shape[1] * int(unit_size.max())
    acc = np.zeros(0, np.uint32 if most < 2**32 else np.uint64)
    # Multiplicities are counted in one byte when no count passes 255 (always, but for tiny or
    # pathological draws); the kernel reports an overflow and is rerun with wider counts.
    for count_dtype in (np.uint8, np.uint16, np.uint32):  # a count never passes the draws per resample
        out, status = _kernel(indices, unit_size, int(np.iinfo(count_dtype).max), np.zeros(0, count_dtype), acc,
                              rows, sc, offsets, gend, gmid, gkind, goff, trows, tseg, tmode, fixed, refit)
        if status == _OUTSIDE:  # checked while counting, not in two extra passes over the indices
            raise ValueError(f"bootstrap indices outside [0, {n_units})")
        if status != _OVERFLOW:
            break
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
