"""Nested, patient-grouped label-fraction subsets of the train split (issue 12, grid axis ``label_fractions``).

Every train patient gets a place in one fixed order: patients sorted by a keyed BLAKE2b hash of
(``seed``, purpose ``label_fraction``, patient id) (:func:`cxrbench.labels.splits.patient_draw`), so the
order depends on the seed and the ids alone, not on row order, Python or numpy versions. The subset
for fraction ``f`` is built from the smallest fraction up:

1. the shortest prefix of that order holding at least ``ceil(f * N)`` of the ``N`` train images;
2. plus every patient of the next smaller subset (so 0.01 ⊂ 0.1 ⊂ 1.0 by construction);
3. plus, for each label with a positive in the full train split but none in the subset so far, the
   first patient in the same order carrying a positive of that label.

A subset is therefore at least ``f`` of the train images, and larger by the last patient's other
images and by the patients added for step 3 (noticeable only for tiny fractions of small datasets).
1.0 (the full train split) is always part of the result, requested or not: every train image gets a
row, with ``min_fraction`` the smallest requested fraction whose subset holds it, or 1.0. A run at
fraction ``f`` keeps the rows with ``min_fraction <= f``; it must be one of the requested fractions
(or 1.0), which ``fractions.parquet`` records in its Parquet metadata (:func:`read_fraction_subsets`).

NaN policy: only ``y == 1`` is a positive; NaN (masked or not assessed) is neither positive nor
negative and is counted as ``n_missing``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow
import pyarrow.parquet as pq

from cxrbench.labels.splits import patient_draw

_logger = logging.getLogger(__name__)

__all__ = [
    "FRACTIONS_METADATA_KEY",
    "FractionError",
    "fraction_counts",
    "label_fraction_subsets",
    "read_fraction_subsets",
    "write_fraction_subsets",
]

FRACTIONS_METADATA_KEY = b"cxrbench.fractions"
_PURPOSE = "label_fraction"
_REQUIRED = ("image_id", "patient_id", "split")
SUBSET_COLUMNS = ("image_id", "patient_id", "min_fraction")
COUNT_COLUMNS = ("fraction", "label", "n_images", "n_patients", "n_pos", "n_neg", "n_missing")


class FractionError(ValueError):
    """Label fractions or the labels table they are drawn from are invalid."""


def _checked_fractions(fractions: Sequence[float]) -> list[float]:
    """The requested fractions, ascending, with 1.0 added; refuses values outside (0, 1] and repeats."""
    values = [float(f) for f in fractions]
    bad = [f for f in values if not 0.0 < f <= 1.0]  # NaN fails the comparison too
    if bad:
        raise FractionError(f"label fractions must be in (0, 1]; got {bad}")
    if len(set(values)) != len(values):
        raise FractionError(f"label fractions {values} repeat a value")
    return sorted({*values, 1.0})


def _train_rows(labels: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The train rows of a labels table and its ``y_`` columns; clear errors for a malformed table."""
    missing = [c for c in _REQUIRED if c not in labels.columns]
    y_cols = [c for c in labels.columns if str(c).startswith("y_")]
    if missing or not y_cols:
        what = missing + ([] if y_cols else ["y_<finding> (none)"])
        raise FractionError(f"labels table lacks column(s) {what}")
    train = labels.loc[labels["split"].eq("train").to_numpy(), [*_REQUIRED, *y_cols]]
    if train.empty:
        splits = sorted(map(str, labels["split"].dropna().unique()))
        raise FractionError(f"labels table has no train rows (splits present: {splits})")
    null_patient = train["patient_id"].isna().to_numpy()
    if null_patient.any():
        raise FractionError(f"train image {train['image_id'].iloc[int(np.argmax(null_patient))]!r} has no patient_id")
    dup = train["image_id"].duplicated().to_numpy()
    if dup.any():
        raise FractionError(f"image_id {train['image_id'].iloc[int(np.argmax(dup))]!r} appears more than once")
    for col in y_cols:
        values = train[col].to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~(np.isnan(values) | (values == 0.0) | (values == 1.0))
        if bad.any():
            row = int(np.argmax(bad))
            raise FractionError(f"{col} of image {train['image_id'].iloc[row]!r} is {float(values[row])!r}, not 1/0/NaN")
    return train, y_cols


def _positives(train: pd.DataFrame, y_cols: list[str]) -> np.ndarray:
    """Boolean (rows × labels): the label is positive (1.0); NaN and 0 are not."""
    return train[y_cols].to_numpy(dtype=np.float64, na_value=np.nan) == 1.0


def label_fraction_subsets(labels: pd.DataFrame, fractions: Sequence[float], *, seed: int) -> pd.DataFrame:
    """``image_id, patient_id, min_fraction`` for every train image of a labels table (see the module doc).

    Rows come in draw order (by ``min_fraction``, then the patient order, then ``image_id``), independent of
    the input's row order. ``min_fraction`` takes only requested values and 1.0.
    """
    steps = _checked_fractions(fractions)
    train, y_cols = _train_rows(labels)
    codes, patients = pd.factorize(train["patient_id"])
    patient_ids = np.asarray(patients, dtype=object)
    n_patients = len(patient_ids)
    draw = patient_draw(patient_ids, seed=seed, name="", purpose=_PURPOSE)
    # ids break (astronomically unlikely) ties, so the order is a function of the ids and the seed alone
    order = pd.DataFrame({"u": draw, "id": patient_ids}).sort_values(["u", "id"], kind="mergesort").index.to_numpy()
    rank = np.empty(n_patients, dtype=np.int64)
    rank[order] = np.arange(n_patients)

    n_images = len(train)
    cum_images = np.cumsum(np.bincount(codes, minlength=n_patients)[order])
    pos_rows = _positives(train, y_cols)
    patient_pos = np.column_stack([np.bincount(codes, weights=pos_rows[:, j], minlength=n_patients) > 0
                                   for j in range(len(y_cols))])
    has_pos = patient_pos.any(axis=0)
    # per label, the first patient in draw order with a positive (only read where has_pos)
    first_pos = order[np.argmax(patient_pos[order], axis=0)]

    member = np.zeros(n_patients, dtype=bool)
    min_fraction = np.full(n_patients, np.nan)
    for f in steps:
        target = math.ceil(round(f * n_images, 6))  # rounding drops float noise such as 0.1 * 1000 = 100.00000000000001
        prefix = int(np.searchsorted(cum_images, target, side="left")) + 1
        member[order[:prefix]] = True
        lacking = has_pos & ~patient_pos[member].any(axis=0)
        member[first_pos[lacking]] = True
        min_fraction[member & np.isnan(min_fraction)] = f
        _logger.debug("fraction %s: prefix of %d patients, %d added for labels %s", f, prefix,
                      int(lacking.sum()), [c[2:] for c in np.asarray(y_cols)[lacking]])

    out = pd.DataFrame({
        "image_id": train["image_id"].to_numpy(dtype=object),
        "patient_id": train["patient_id"].to_numpy(dtype=object),
        "min_fraction": min_fraction[codes],
        "_rank": rank[codes],
    })
    out = out.sort_values(["min_fraction", "_rank", "image_id"], kind="mergesort").drop(columns="_rank")
    return out.reset_index(drop=True)


def fraction_counts(labels: pd.DataFrame, subsets: pd.DataFrame, *, fractions: Sequence[float]) -> pd.DataFrame:
    """Per fraction (ascending, 1.0 included) and label: ``n_images, n_patients, n_pos, n_neg, n_missing``.

    ``fractions`` are the requested ones: a fraction whose subset equals the next smaller one has no row
    with its ``min_fraction`` in ``subsets``, so it cannot be read from ``subsets`` alone. ``label`` is the
    canonical name (without ``y_``).
    """
    steps = _checked_fractions(fractions)
    missing = [c for c in SUBSET_COLUMNS if c not in subsets.columns]
    if missing:
        raise FractionError(f"subsets table lacks column(s) {missing}")
    unknown = sorted(set(subsets["min_fraction"].dropna()) - set(steps))
    if unknown or subsets["min_fraction"].isna().any():
        raise FractionError(f"subsets hold min_fraction value(s) {unknown or ['NaN']} not among {steps}")
    train, y_cols = _train_rows(labels)
    at = pd.Index(train["image_id"]).get_indexer(subsets["image_id"])
    if (at < 0).any():
        raise FractionError(f"subset image {subsets['image_id'].iloc[int(np.argmax(at < 0))]!r} is not a train "
                            "image of the labels table")
    values = train[y_cols].to_numpy(dtype=np.float64, na_value=np.nan)[at]
    min_fraction = subsets["min_fraction"].to_numpy(dtype=np.float64)
    patient = subsets["patient_id"].to_numpy(dtype=object)
    frames = []
    for f in steps:
        keep = min_fraction <= f
        v = values[keep]
        frames.append(pd.DataFrame({
            "fraction": f,
            "label": [c[2:] for c in y_cols],
            "n_images": int(keep.sum()),
            "n_patients": int(pd.unique(patient[keep]).size),
            "n_pos": (v == 1.0).sum(axis=0),
            "n_neg": (v == 0.0).sum(axis=0),
            "n_missing": np.isnan(v).sum(axis=0),
        }))
    return pd.concat(frames, ignore_index=True)


def write_fraction_subsets(subsets: pd.DataFrame, path: Path | str, *, fractions: Sequence[float], seed: int) -> None:
    """Write ``fractions.parquet`` with the requested fractions (1.0 added) and seed in its metadata."""
    table = pyarrow.Table.from_pandas(subsets.loc[:, list(SUBSET_COLUMNS)], preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[FRACTIONS_METADATA_KEY] = json.dumps({"fractions": _checked_fractions(fractions), "seed": seed}).encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata(meta), path)


def read_fraction_subsets(path: Path | str) -> tuple[pd.DataFrame, list[float]]:
    """Read ``fractions.parquet`` -> (table, the fractions it was drawn for, ascending, 1.0 included)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: fractions file does not exist (run `cxrbench fractions` first)")
    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    if FRACTIONS_METADATA_KEY not in meta:
        raise FractionError(f"{path}: Parquet metadata lacks {FRACTIONS_METADATA_KEY.decode()!r}")
    missing = [c for c in SUBSET_COLUMNS if c not in table.column_names]
    if missing:
        raise FractionError(f"{path}: lacks column(s) {missing}")
    return table.to_pandas(), list(json.loads(meta[FRACTIONS_METADATA_KEY])["fractions"])
