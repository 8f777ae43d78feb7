"""Paired bootstrap tests between initialisations and Benjamini-Hochberg over the family of tests.

For resampled AUROCs ``a`` and ``b`` of two models on the same resamples:

* ``p_a_gt_b = 1 - mean(a > b)``: the study's one-sided p that model a beats model b;
* ``p_b_gt_a = 1 - mean(b > a)``: the other direction;
* ``p_two_sided = min(1, 2 * min(p_a_gt_b, p_b_gt_a))``.

Resolution is 1/B; a p of 0 means "< 1/B" and is printed so. Identical predictions give ties on
every resample, so both one-sided p are 1 (no evidence either way).
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control

from cxrbench.evaluation.bootstrap import macro_over, summarise
from cxrbench.evaluation.metrics import MACRO

_logger = logging.getLogger(__name__)

__all__ = ["P_COLUMNS", "TEST_COLUMNS", "adjust_bh", "compare_runs", "oriented", "paired_test"]

P_COLUMNS = ("p_a_gt_b", "p_b_gt_a", "p_two_sided")
TEST_COLUMNS = (
    "init_a", "init_b", "label", "level", "n_labels", "auroc_a_mean", "auroc_a_sd", "auroc_b_mean", "auroc_b_sd",
    *P_COLUMNS, "n_paired", "delta_mean", "delta_sd", "delta_ci_low", "delta_ci_high",
)


def paired_test(a: np.ndarray, b: np.ndarray, *, confidence: float = 0.95) -> dict[str, float]:
    """Paired bootstrap test of per-resample values ``a`` vs ``b``; resamples where either is NaN are dropped."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ok = ~(np.isnan(a) | np.isnan(b))
    a, b = a[ok], b[ok]
    if a.size == 0:
        return {"p_a_gt_b": np.nan, "p_b_gt_a": np.nan, "p_two_sided": np.nan, "n_paired": 0,
                **{f"delta_{k}": np.nan for k in ("mean", "sd", "ci_low", "ci_high")}}
    p_ab = float(1.0 - np.mean(a > b))
    p_ba = float(1.0 - np.mean(b > a))
    delta = summarise(a - b, confidence=confidence)
    return {
        "p_a_gt_b": p_ab,
        "p_b_gt_a": p_ba,
        "p_two_sided": min(1.0, 2.0 * min(p_ab, p_ba)),
        "n_paired": int(a.size),
        **{f"delta_{k}": delta[k] for k in ("mean", "sd", "ci_low", "ci_high")},
    }


def compare_runs(
    resamples: dict[str, tuple[tuple[str, ...], np.ndarray]],
    defined: dict[str, set[str]],
    *,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Every pair of runs on one dataset, per shared label and for the macro mean over shared labels.

    Args:
        resamples: init -> (labels, (B, L) per-resample AUROCs); inits in config order, all drawn
            with the same bootstrap indices (paired).
        defined: init -> labels whose test AUROC is defined (both classes present).

    The macro row of a pair averages the labels both runs share and both define, so a run trained on
    a label subset (the ``study`` transfer of a pipeline initialisation) is compared on that subset.
    """
    rows = []
    for (init_a, (labels_a, auc_a)), (init_b, (labels_b, auc_b)) in itertools.combinations(resamples.items(), 2):
        shared = [lab for lab in labels_a if lab in labels_b and lab in defined[init_a] and lab in defined[init_b]]
        if not shared:
            _logger.warning("%s vs %s: no shared label with a defined AUROC; no test", init_a, init_b)
            continue
        cols_a = [labels_a.index(lab) for lab in shared]
        cols_b = [labels_b.index(lab) for lab in shared]
        series = [(lab, auc_a[:, ca], auc_b[:, cb], 1) for lab, ca, cb in zip(shared, cols_a, cols_b)]
        series.append((MACRO, macro_over(auc_a, cols_a), macro_over(auc_b, cols_b), len(shared)))
        for label, a, b, n_labels in series:
            where = f"{init_a} vs {init_b}, {label!r}: "
            sa = summarise(a, confidence=confidence, context=f"{where}{init_a} AUROC: ")
            sb = summarise(b, confidence=confidence, context=f"{where}{init_b} AUROC: ")
            rows.append({
                "init_a": init_a,
                "init_b": init_b,
                "label": label,
                "level": "macro" if label == MACRO else "label",
                "n_labels": n_labels,
                "auroc_a_mean": sa["mean"],
                "auroc_a_sd": sa["sd"],
                "auroc_b_mean": sb["mean"],
                "auroc_b_sd": sb["sd"],
                **paired_test(a, b, confidence=confidence),
            })
    # Explicit dtypes: a dataset with a single run has no pair, and an empty frame must still concatenate
    # with the others as numbers (object columns would reach the BH step).
    return pd.DataFrame(rows, columns=list(TEST_COLUMNS)).astype(_TEST_DTYPES)


_TEST_DTYPES = {
    c: ("string" if c in ("init_a", "init_b", "label", "level") else "int64" if c in ("n_labels", "n_paired")
        else "float64")
    for c in TEST_COLUMNS
}

_FAMILY_KEYS = {"all": ["level"], "per_dataset": ["level", "dataset"], "per_pair": ["level", "init_a", "init_b"]}


def adjust_bh(tests: pd.DataFrame, *, family: str, alpha: float) -> pd.DataFrame:
    """Add Benjamini-Hochberg adjusted p (``<p>_bh``) per family and ``significant`` (two-sided, adjusted).

    Per-label and macro tests are separate families (``level``); ``family`` further splits them:
    ``all`` = labels x datasets x pairs, ``per_dataset``, or ``per_pair`` (across datasets). NaN p
    stay NaN and are not counted in the family.
    """
    if family not in _FAMILY_KEYS:
        raise ValueError(f"unknown fdr_family {family!r}; expected one of {', '.join(_FAMILY_KEYS)}")
    out = tests.copy()
    for col in P_COLUMNS:
        out[f"{col}_bh"] = np.nan
    for _, group in out.groupby(_FAMILY_KEYS[family], sort=True):
        idx = group.index
        for col in P_COLUMNS:
            p = out.loc[idx, col]
            ok = p.notna()
            if ok.any():
                out.loc[p.index[ok], f"{col}_bh"] = false_discovery_control(p[ok].to_numpy(), method="bh")
    out["fdr_family"] = family
    out["significant"] = out["p_two_sided_bh"] <= alpha
    return out


def oriented(tests: pd.DataFrame, init: str, reference: str) -> pd.DataFrame:
    """Rows comparing ``init`` with ``reference``, oriented so that ``delta`` = init - reference."""
    same = tests[(tests["init_a"] == init) & (tests["init_b"] == reference)]
    flipped = tests[(tests["init_a"] == reference) & (tests["init_b"] == init)].copy()
    if not flipped.empty:
        swap = {"init_a": "init_b", "init_b": "init_a", "auroc_a_mean": "auroc_b_mean", "auroc_b_mean": "auroc_a_mean",
                "auroc_a_sd": "auroc_b_sd", "auroc_b_sd": "auroc_a_sd", "delta_ci_low": "delta_ci_high",
                "delta_ci_high": "delta_ci_low"}
        swap.update({c: c.replace("a_gt_b", "b_gt_a") if "a_gt_b" in c else c.replace("b_gt_a", "a_gt_b")
                     for c in flipped.columns if "a_gt_b" in c or "b_gt_a" in c})
        flipped = flipped.rename(columns=swap)
        for col in ("delta_mean", "delta_ci_low", "delta_ci_high"):
            flipped[col] = -flipped[col]
    return pd.concat([same, flipped], ignore_index=True)
