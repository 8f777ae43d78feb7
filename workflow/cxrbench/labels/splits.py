"""Patient-grouped train / val / test splits, deterministic in (seed, dataset name, patient ids).

Official test sets are kept intact. A derived split orders patients by a keyed hash of their id
(BLAKE2b over ``seed``, dataset name, purpose and patient id) and takes patients in that order until
the wanted fraction of *images* is reached, so the result does not depend on row order and adding a
patient does not move the others.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pandas as pd

_logger = logging.getLogger(__name__)

__all__ = ["STUDY_OWN_SPLIT", "SplitError", "assign_splits", "check_disjoint", "patient_order",
           "patients_in_several_splits"]

# Datasets the study re-split ~80/20 itself instead of using an official test set (paper-methods.md 2.1).
STUDY_OWN_SPLIT = frozenset({"chexpert", "mimic", "padchest", "uka"})


class SplitError(ValueError):
    """Splits overlap in patients or cannot be built."""


def patient_order(patients: np.ndarray, *, seed: int, name: str, purpose: str) -> np.ndarray:
    """A 64-bit key per distinct patient id; sorting by it gives the seeded patient order."""
    prefix = f"{seed}\x1f{name}\x1f{purpose}\x1f".encode()
    blake2b = hashlib.blake2b
    # digests joined and read as big-endian uint64 at once: half the time of int.from_bytes per id
    digests = b"".join([blake2b(prefix + str(p).encode(), digest_size=8).digest() for p in patients])
    return np.frombuffer(digests, dtype=">u8").astype(np.uint64)


def _take_fraction(patient: pd.Series, fraction: float, *, seed: int, name: str, purpose: str) -> np.ndarray:
    """Rows of the patients taken, in hash order, until ``fraction`` of the rows is reached."""
    codes, uniques = pd.factorize(patient)
    counts = np.bincount(codes, minlength=len(uniques))
    ids = np.asarray(uniques, dtype=object)
    keys = patient_order(ids, seed=seed, name=name, purpose=purpose)
    # ties are impossible in practice (64-bit keys); the id breaks them anyway for full determinism
    order = np.argsort(keys, kind="stable")
    if (keys[order][1:] == keys[order][:-1]).any():
        order = np.lexsort((ids.astype(str), keys))
    cum_before = np.cumsum(counts[order]) - counts[order]
    chosen = np.zeros(len(uniques), dtype=bool)
    chosen[order[cum_before < fraction * len(patient)]] = True
    return chosen[codes]


def assign_splits(
    df: pd.DataFrame,
    *,
    seed: int,
    name: str,
    test_fraction: float,
    val_fraction: float,
    use_official_test: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """(split, split_source) per row of ``df`` (columns ``patient_id``, ``split_official``).

    Test: the official test rows when ``use_official_test`` and any exist, else ``test_fraction`` of
    the images by patient. Val: ``val_fraction`` of the remaining (train-pool) images by patient;
    official validation rows join the train pool (the study had no validation split).
    """
    patient = df["patient_id"]
    official = df["split_official"]
    n = len(df)
    split = np.full(n, "train", dtype=object)
    source = np.full(n, "derived", dtype=object)
    has_official_test = bool(official.eq("test").any())
    if use_official_test and has_official_test:
        is_test = official.eq("test").to_numpy()
        source[is_test] = "official"
        source[~is_test & official.notna().to_numpy()] = "official"
    else:
        is_test = _take_fraction(patient, test_fraction, seed=seed, name=name, purpose="test")
    split[is_test] = "test"
    pool = ~is_test
    is_val = np.zeros(n, dtype=bool)
    is_val[pool] = _take_fraction(patient[pool], val_fraction, seed=seed, name=name, purpose="val")
    split[is_val] = "val"
    source[is_val] = "derived"
    return split, source


def patients_in_several_splits(patient: pd.Series | np.ndarray, split: pd.Series | np.ndarray) -> np.ndarray:
    """Patient ids that have rows in more than one split, in order of first appearance (vectorised)."""
    p_codes, p_uniques = pd.factorize(patient, use_na_sentinel=False)
    s_codes, s_uniques = pd.factorize(split, use_na_sentinel=False)
    pairs = np.unique(p_codes.astype(np.int64) * (len(s_uniques) + 1) + s_codes)
    owner = pairs // (len(s_uniques) + 1)
    shared = np.unique(owner[1:][owner[1:] == owner[:-1]])
    return np.asarray(p_uniques, dtype=object)[shared]


def check_disjoint(patient: pd.Series, split: pd.Series, *, where: str) -> None:
    """Hard check: fail if any patient has images in two splits (names up to five of them)."""
    shared = patients_in_several_splits(patient, split)
    if len(shared):
        examples = ", ".join(map(repr, shared[:5]))
        raise SplitError(f"{where}: {len(shared)} patient(s) appear in more than one split, e.g. {examples}")
