"""Point metrics of one run: per-label AUROC, average precision and Youden-threshold metrics.

NaN policy: a masked target (NaN) is excluded from that label only. A label with a single class
among its unmasked test targets has every metric NaN and raises ``UndefinedMetricWarning``; it is
left out of the macro mean (whose ``n_labels`` says how many labels it averages).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

_logger = logging.getLogger(__name__)

__all__ = [
    "MACRO",
    "THRESHOLD_METRICS",
    "UndefinedMetricWarning",
    "confusion_at",
    "defined_labels",
    "point_metrics",
    "roc_points",
    "threshold_metrics",
    "youden_threshold",
]

MACRO = "macro"  # the label name of macro-mean rows everywhere in evaluation outputs
THRESHOLD_METRICS = ("accuracy", "sensitivity", "specificity", "f1")


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined (e.g. AUROC of a label with one class) and is reported as NaN."""


def _valid(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = ~np.isnan(y)
    return y[keep], s[keep]


def _two_classes(y: np.ndarray) -> bool:
    return bool(y.size) and 0 < int(y.sum()) < y.size


def youden_threshold(y: np.ndarray, s: np.ndarray) -> float:
    """Youden's J threshold (``argmax(tpr - fpr)`` on sklearn's ROC; positive iff score >= threshold).

    Masked (NaN) targets are ignored; NaN when fewer than two classes remain. The ROC's first point
    has threshold +inf, so a J that never exceeds 0 gives +inf (predict all negative), as in sklearn.
    """
    y, s = _valid(np.asarray(y, dtype=np.float64), np.asarray(s, dtype=np.float64))
    if not _two_classes(y):
        return float("nan")
    fpr, tpr, thr = roc_curve(y, s)
    return float(thr[np.argmax(tpr - fpr)])


def confusion_at(y: np.ndarray, s: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    """(tp, fp, tn, fn) of unmasked targets with prediction ``score >= threshold``."""
    y, s = _valid(np.asarray(y, dtype=np.float64), np.asarray(s, dtype=np.float64))
    pred = s >= threshold
    pos = y == 1.0
    return (int(np.sum(pred & pos)), int(np.sum(pred & ~pos)), int(np.sum(~pred & ~pos)), int(np.sum(~pred & pos)))


def threshold_metrics(tp: np.ndarray, fp: np.ndarray, tn: np.ndarray, fn: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, sensitivity, specificity and F1 from (possibly weighted) confusion counts, elementwise.

    An undefined ratio (zero denominator) is NaN.
    """
    tp, fp, tn, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, tn, fn))
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "accuracy": (tp + tn) / (tp + fp + tn + fn),
            "sensitivity": tp / (tp + fn),
            "specificity": tn / (tn + fp),
            "f1": 2 * tp / (2 * tp + fp + fn),
        }


def defined_labels(targets: np.ndarray) -> np.ndarray:
    """Boolean (L,) mask: labels whose unmasked targets hold both classes."""
    return np.array([_two_classes(_valid(targets[:, j], targets[:, j])[0]) for j in range(targets.shape[1])])


def point_metrics(
    labels: tuple[str, ...] | list[str],
    test_targets: np.ndarray,
    test_scores: np.ndarray,
    *,
    thresholds: np.ndarray,
    context: str = "",
) -> pd.DataFrame:
    """Per-label metrics on the full test set plus a ``macro`` row (mean over defined labels).

    Args:
        labels: label names, one per column.
        test_targets, test_scores: (N, L) arrays; NaN targets are masked.
        thresholds: (L,) decision thresholds (from validation, or refitted on test in study mode).
        context: text naming the run, for warnings.
    """
    rows = []
    for j, label in enumerate(labels):
        y, s = _valid(test_targets[:, j], test_scores[:, j])
        n_pos = int(y.sum())
        row: dict[str, object] = {
            "label": label,
            "n_pos": n_pos,
            "n_neg": int(y.size - n_pos),
            "n_masked": int(test_targets.shape[0] - y.size),
            "threshold": float(thresholds[j]),
        }
        if _two_classes(y):
            row["auroc"] = float(roc_auc_score(y, s))
            row["average_precision"] = float(average_precision_score(y, s))
            if np.isnan(thresholds[j]):
                row.update(dict.fromkeys(THRESHOLD_METRICS, float("nan")))
            else:
                counts = confusion_at(y, s, float(thresholds[j]))
                row.update({k: float(v) for k, v in threshold_metrics(*counts).items()})
        else:
            msg = f"{context}label {label!r}: test set has {n_pos} positive / {y.size - n_pos} negative: metrics are NaN"
            warnings.warn(msg, UndefinedMetricWarning, stacklevel=2)
            _logger.warning(msg)
            row.update(dict.fromkeys(("auroc", "average_precision", *THRESHOLD_METRICS), float("nan")))
        rows.append(row)
    frame = pd.DataFrame(rows)
    ok = frame["auroc"].notna()
    macro = {"label": MACRO, "n_labels": int(ok.sum())}
    for col in ("auroc", "average_precision", *THRESHOLD_METRICS):
        macro[col] = float(frame.loc[ok, col].mean()) if ok.any() else float("nan")
    frame["n_labels"] = 1
    return pd.concat([frame, pd.DataFrame([macro])], ignore_index=True)


def roc_points(y: np.ndarray, s: np.ndarray) -> pd.DataFrame:
    """The test ROC curve of one label (sklearn), masked targets excluded; empty if undefined."""
    y, s = _valid(np.asarray(y, dtype=np.float64), np.asarray(s, dtype=np.float64))
    if not _two_classes(y):
        return pd.DataFrame({"fpr": [], "tpr": [], "threshold": []})
    fpr, tpr, thr = roc_curve(y, s)
    return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thr})
