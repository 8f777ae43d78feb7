"""Patient-grouped train / val / test splits, deterministic in (seed, dataset name, patient ids).

Official test sets are kept intact. A derived split draws each patient on its own: a keyed hash of
(``seed``, dataset name, purpose, patient id) is read as a number ``u`` uniform in [0, 1), and the
patient goes to the split when ``u < fraction``. A patient's split is therefore a function of the seed,
the dataset name and its own id only: it does not depend on row order or on which other patients are
listed, so adding or removing patients never moves the others. The fractions hold in expectation (over
patients, hence over images); on a given dataset the image share deviates from them by chance, by about
``sqrt(f (1 - f) * sum(n_i^2)) / N`` for patients with ``n_i`` images (0.2 % of CheXpert, a few percent
of a 100-patient dataset).
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pandas as pd

_logger = logging.getLogger(__name__)

__all__ = ["STUDY_OWN_SPLIT", "SplitError", "assign_splits", "check_disjoint", "patient_draw",
           "patients_in_several_splits"]

# Datasets the study re-split ~80/20 itself instead of using an official test set (paper-methods.md 2.1;
# UKA-CXR kept its institutional split, with validation folded into training).
STUDY_OWN_SPLIT = frozenset({"chexpert", "mimic", "padchest"})


class SplitError(ValueError):
    """Splits overlap in patients or cannot be built."""


def patient_draw(patients: np.ndarray, *, seed: int, name: str, purpose: str) -> np.ndarray:
    """A number in [0, 1) per patient id, from a keyed BLAKE2b hash of (seed, name, purpose, id) alone."""
    prefix = f"{seed}\x1f{name}\x1f{purpose}\x1f".encode()
    blake2b = hashlib.blake2b
    # digests joined and read as big-endian uint64 at once: half the time of int.from_bytes per id
    digests = b"".join([blake2b(prefix + str(p).encode(), digest_size=8).digest() for p in patients])
    # the top 53 bits are exact in a float64, so u < 1 always
    return (np.frombuffer(digests, dtype=">u8") >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _draw_rows(patient: pd.Series, fraction: float, *, seed: int, name: str, purpose: str) -> np.ndarray:
    """Per row: whether its patient is drawn (``u < fraction``); one hash per distinct patient."""
    codes, uniques = pd.factorize(patient)
    chosen = patient_draw(np.asarray(uniques, dtype=object), seed=seed, name=name, purpose=purpose) < fraction
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

    Test: the official test rows when ``use_official_test`` and any exist, else each patient with
    probability ``test_fraction``. Val: each remaining (train-pool) patient with probability
    ``val_fraction``; official validation rows join the train pool (the study had no validation split).
    The test and val draws use independent hashes, so a patient's val membership is the same whether
    the test set is official or derived.
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
        is_test = _draw_rows(patient, test_fraction, seed=seed, name=name, purpose="test")
    split[is_test] = "test"
    pool = ~is_test
    is_val = np.zeros(n, dtype=bool)
    is_val[pool] = _draw_rows(patient[pool], val_fraction, seed=seed, name=name, purpose="val")
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
