"""Index table -> harmonised labels: canonical findings, uncertainty policy, view filter, exclusions,
patient-grouped splits. Pure functions on DataFrames; file checks come in through ``exists``.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.datasets import native_vocabulary, source_values
from cxrbench.labels.canonical import resolve_label_set, source_rules
from cxrbench.labels.schema import BASE_COLUMNS
from cxrbench.labels.splits import STUDY_OWN_SPLIT, assign_splits, check_disjoint

_logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_VIEWS",
    "HarmoniseError",
    "Harmonised",
    "apply_uncertainty",
    "combine_sources",
    "existing_files",
    "harmonise",
]

DEFAULT_VIEWS = ("PA", "AP", "AP_SUPINE")
UNCERTAINTY = ("u_zeros", "u_ones", "u_ignore")
# labels.padchest_drop item -> the PadChest adapter's exclude_reason it drops (the study kept both kinds)
PADCHEST_DROP = {"empty": "labels_empty", "exclude": "source_marked_exclude"}


class HarmoniseError(ValueError):
    """Harmonisation cannot proceed (missing source column, too many missing images, empty result)."""


@dataclass
class Harmonised:
    """The harmonised table and what the summary reports about how it was made."""

    labels: pd.DataFrame
    label_set: list[str]
    n_listed: int
    exclusions: dict[str, int] = field(default_factory=dict)
    approximate: list[str] = field(default_factory=list)
    not_assessed: list[str] = field(default_factory=list)


def combine_sources(values: np.ndarray) -> np.ndarray:
    """OR over source columns (N x K, 1/0/-1/NaN) -> N: any 1 -> 1; else any -1 -> -1; else any 0 -> 0; else NaN."""
    out = np.full(values.shape[0], np.nan, dtype="float32")
    out[(values == 0).any(axis=1)] = 0.0
    out[(values == -1).any(axis=1)] = -1.0
    out[(values == 1).any(axis=1)] = 1.0
    return out


def apply_uncertainty(values: np.ndarray, *, policy: str, not_mentioned: str) -> np.ndarray:
    """Tri-state -> 1/0/NaN. Uncertain (-1): u_zeros -> 0, u_ones -> 1, u_ignore -> NaN (masked).
    Not mentioned (NaN of an assessed finding): ``negative`` -> 0 (the study), ``missing`` -> NaN.
    """
    if policy not in UNCERTAINTY:
        raise HarmoniseError(f"uncertainty policy must be one of {UNCERTAINTY}, got {policy!r}")
    out = values.astype("float32", copy=True)
    out[out == -1] = {"u_zeros": 0.0, "u_ones": 1.0, "u_ignore": np.nan}[policy]
    if not_mentioned == "negative":
        out[np.isnan(values)] = 0.0
    elif not_mentioned != "missing":
        raise HarmoniseError(f"labels.not_mentioned must be 'negative' or 'missing', got {not_mentioned!r}")
    return out


def existing_files(root: Path, paths: Sequence[str]) -> np.ndarray:
    """Which ``root``-relative paths exist: one ``os.scandir`` per distinct parent folder, no per-file stat."""
    by_dir: dict[str, list[int]] = defaultdict(list)
    names = []
    for i, p in enumerate(paths):
        pp = PurePosixPath(p)
        by_dir[str(pp.parent)].append(i)
        names.append(pp.name)
    present = np.zeros(len(paths), dtype=bool)
    for folder, rows in by_dir.items():
        try:
            with os.scandir(Path(root) / folder) as it:
                listing = {e.name for e in it if e.is_file()}
        except (FileNotFoundError, NotADirectoryError):
            continue
        for i in rows:
            present[i] = names[i] in listing
    return present


def _finding_values(
    index: pd.DataFrame, rules: dict, findings: Sequence[str], name: str
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(``{finding: combined tri-state values}``, ``{source label: values}``) for ``findings``."""
    carried = source_values(index, [s for f in findings if f in rules for s in rules[f].sources])
    values = {}
    for finding in findings:
        if finding not in rules:
            continue
        # a source label the dataset's files do not carry (e.g. VinDr's global labels in the Kaggle
        # variant) has no index column; a finding with none of its sources is not assessed (NaN)
        cols = [carried[s] for s in rules[finding].sources if s in carried]
        if cols:
            values[finding] = combine_sources(np.column_stack(cols))
        else:
            _logger.warning("dataset %r: no source column of %r (%s) in the index", name, finding,
                            ", ".join(rules[finding].sources))
    return values, carried


def harmonise(
    index: pd.DataFrame,
    settings: dict[str, Any],
    *,
    exists: Callable[[Sequence[str]], np.ndarray] | None = None,
) -> Harmonised:
    """Harmonise one dataset's index table with the stage ``settings`` (see ``cxrbench harmonise``).

    ``exists(source_paths) -> bool array`` checks images on disk; None skips the check (tests on
    label files without images). Every dropped row is counted under one reason, first match wins:
    the adapter's ``exclude_reason`` (PadChest's empty / ``exclude`` rows only when ``labels.padchest_drop``
    names them), ``view_not_kept``, ``uncertain_in_drop_set``, ``image_missing``.
    """
    name = settings["name"]
    entry = settings["dataset"]
    lab = settings.get("labels", {})
    spl = settings.get("splits", {})
    adapter = entry["adapter"]
    vocab = native_vocabulary(adapter) if adapter != "generic_csv" else None
    rules = source_rules(adapter, entry=entry, padchest_matching=lab.get("padchest_matching", "exact"),
                         vocabulary=vocab)
    label_set = resolve_label_set(entry.get("label_set", "all"), rules)
    drop_set = list(lab.get("drop_uncertain_in", []))
    resolve_label_set(drop_set, rules)  # validates the names
    values, carried = _finding_values(index, rules, list(dict.fromkeys([*label_set, *drop_set])), name)
    not_assessed = [f for f in label_set if f not in values]
    if not_assessed:
        _logger.warning("%s: %s not assessed by adapter %s: NaN columns", name, not_assessed, adapter)
    approximate = [f for f in label_set if f in values and rules[f].approximate]

    n = len(index)
    reason = index["exclude_reason"].to_numpy(dtype=object, na_value=None).copy()
    if adapter == "padchest":
        dropped = set(lab.get("padchest_drop", list(PADCHEST_DROP)))
        kept_anyway = [r for item, r in PADCHEST_DROP.items() if item not in dropped]
        reason[pd.Series(reason, dtype=object).isin(kept_anyway).to_numpy()] = None
    keep_views = entry.get("views", list(DEFAULT_VIEWS))
    free = pd.isna(reason)
    reason[free & ~index["view"].isin(keep_views).to_numpy()] = "view_not_kept"
    if drop_set:
        uncertain = np.zeros(n, dtype=bool)
        for f in drop_set:
            if f in values:
                uncertain |= values[f] == -1
        reason[pd.isna(reason) & uncertain] = "uncertain_in_drop_set"
    if exists is not None:
        candidates = np.flatnonzero(pd.isna(reason))
        present = exists(index["source_path"].to_numpy(dtype=object)[candidates])
        missing_rows = candidates[~present]
        reason[missing_rows] = "image_missing"
        limit = float(lab.get("max_missing_image_fraction", 0.0))
        if len(candidates) and len(missing_rows) / len(candidates) > limit:
            examples = ", ".join(index["source_path"].iloc[missing_rows[:5]])
            raise HarmoniseError(
                f"dataset {name!r}: {len(missing_rows)} of {len(candidates)} listed images are missing under "
                f"{entry['root']} ({len(missing_rows) / len(candidates):.2%} > labels.max_missing_image_fraction "
                f"{limit:.2%}), e.g. {examples}"
            )
    keep = pd.isna(reason)
    exclusions = pd.Series(reason[~keep]).value_counts().to_dict()
    if not keep.any():
        raise HarmoniseError(f"dataset {name!r}: no image left after exclusions {exclusions}")
    use_official = spl.get("strategy", "official") == "official" or adapter not in STUDY_OWN_SPLIT
    official_test = index["split_official"].eq("test").to_numpy()
    if use_official and official_test.any() and not (official_test & keep).any():
        # otherwise assign_splits would quietly derive a test set from training images instead
        lost = pd.Series(reason[official_test]).value_counts().to_dict()
        raise HarmoniseError(
            f"dataset {name!r}: all {int(official_test.sum())} official test images are excluded ({lost}); "
            f"with view_not_kept, widen datasets.{name}.views (e.g. CheXpert test.csv without view columns "
            "gives frontal images view OTHER)"
        )

    used = {f"raw_{s}" for f in label_set if f in values for s in rules[f].sources if s in carried}
    raw_cols = [c for c in index.columns if c.startswith("raw_") and (
        c in used or index[c].dtype != np.float32 or c == "raw_n_readers" or c.removeprefix("raw_grade_") in
        {u.removeprefix("raw_") for u in used})]
    # only the columns written out are copied (not the unused raw_* and source_tokens columns)
    kept = index.loc[keep, [c for c in index.columns if c in BASE_COLUMNS or c == "split_official" or c in raw_cols]]
    kept = kept.reset_index(drop=True)
    split, split_source = assign_splits(
        kept, seed=int(settings["seed"]), name=name, test_fraction=float(spl.get("test_fraction", 0.2)),
        val_fraction=float(spl.get("val_fraction", 0.1)), use_official_test=use_official,
    )
    check_disjoint(kept["patient_id"], pd.Series(split), where=f"dataset {name!r}")

    policy = entry.get("uncertainty", lab.get("uncertainty", "u_zeros"))
    out = pd.DataFrame({
        "dataset": pd.Series(np.full(len(kept), name, dtype=object), dtype="str"),
        "image_id": kept["image_id"],
        "patient_id": kept["patient_id"],
        "study_id": kept["study_id"],
        "split": pd.Series(split, dtype="str"),
        "split_source": pd.Series(split_source, dtype="str"),
        "view": kept["view"],
        "sex": kept["sex"],
        "age_years": kept["age_years"],
        "source_path": kept["source_path"],
    })
    assert list(out.columns) == list(BASE_COLUMNS)
    ys = {}
    for f in label_set:
        if f in values:
            ys[f"y_{f}"] = apply_uncertainty(values[f][keep], policy=policy,
                                             not_mentioned=lab.get("not_mentioned", "negative"))
        else:  # the dataset does not assess this finding: NaN, never 0
            ys[f"y_{f}"] = np.full(len(kept), np.nan, dtype="float32")
    # token-list sources have no index column: the used ones become raw_* columns (vocabulary order)
    expanded = [s for s in (vocab or carried) if s in carried and f"raw_{s}" in used and f"raw_{s}" not in index]
    tokens = pd.DataFrame({f"raw_{s}": carried[s][keep] for s in expanded})
    out = pd.concat([out, pd.DataFrame(ys), tokens, kept[raw_cols]], axis=1)
    _logger.info("%s: %d of %d listed images kept; excluded %s", name, len(out), n, exclusions or "none")
    return Harmonised(out, label_set, n, exclusions, approximate, not_assessed)
