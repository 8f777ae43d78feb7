"""The canonical finding map (``resources/canonical_findings.csv``) and label-set presets
(``resources/label_sets.yaml``): which source labels of each dataset make each canonical finding.

Map cells list source labels separated by ``|`` (OR-ed); a leading ``~`` marks an approximate
mapping (e.g. UKA ``healthy`` for ``no_finding``), reported in the harmonisation summary. An empty
cell means the dataset does not assess the finding: its column is NaN, never 0.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from cxrbench.config import RESOURCES

_logger = logging.getLogger(__name__)

__all__ = [
    "MAP_PATH",
    "PRESETS_PATH",
    "SourceRule",
    "canonical_findings",
    "canonical_map",
    "label_presets",
    "overlap_labels",
    "resolve_label_set",
    "source_rules",
]

MAP_PATH = RESOURCES / "canonical_findings.csv"
PRESETS_PATH = RESOURCES / "label_sets.yaml"
MAP_ADAPTERS = ("vindr", "pedicxr", "chestxray14", "chexpert", "mimic", "padchest", "uka")


@dataclass(frozen=True)
class SourceRule:
    """How one canonical finding is read from one dataset: OR over ``sources`` (``raw_<source>`` columns)."""

    finding: str
    sources: tuple[str, ...]
    approximate: bool = False


@functools.cache
def canonical_map(path: Path = MAP_PATH) -> pd.DataFrame:
    """The canonical map as a DataFrame of strings ('' = empty cell), one row per canonical finding."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if not df["canonical"].is_unique:
        raise ValueError(f"{path}: canonical names are not unique")
    bad_parent = sorted(set(df["parent"]) - set(df["canonical"]) - {""})
    if bad_parent:
        raise ValueError(f"{path}: parent(s) {bad_parent} are not canonical findings")
    return df.set_index("canonical", drop=False)


def canonical_findings() -> list[str]:
    """Every canonical finding name, in map order."""
    return list(canonical_map().index)


@functools.cache
def label_presets(path: Path = PRESETS_PATH) -> dict[str, dict[str, Any]]:
    """Named label sets: ``{name: {"labels": [...], "study_names": [...], "description": str}}``."""
    with open(path, encoding="utf-8") as fh:
        presets = yaml.safe_load(fh)
    known = set(canonical_findings())
    for name, preset in presets.items():
        unknown = [f for f in preset["labels"] if f not in known]
        if unknown:
            raise ValueError(f"{path}: preset {name!r} names unknown canonical finding(s) {unknown}")
    return presets


def _parse_cell(cell: str) -> tuple[tuple[str, ...], bool]:
    cell = cell.strip()
    approximate = cell.startswith("~")
    items = tuple(s.strip() for s in cell.lstrip("~").split("|") if s.strip())
    return items, approximate


def source_rules(
    adapter: str,
    *,
    entry: dict[str, Any] | None = None,
    padchest_matching: str = "exact",
    vocabulary: Sequence[str] | None = None,
) -> dict[str, SourceRule]:
    """``{canonical finding: SourceRule}`` for every finding the dataset assesses.

    ``generic_csv`` takes its rules from the config entry's ``columns.labels``. For PadChest with
    ``padchest_matching='substring'`` a finding's ``padchest_substring`` patterns select every
    vocabulary item containing them (the study's code searched the raw ``Labels`` string; no
    pattern spans two items, so this is equivalent); findings without a pattern keep exact items.
    """
    if adapter == "generic_csv":
        labels = (entry or {}).get("columns", {}).get("labels", {})
        return {f: SourceRule(f, (src,)) for f, src in labels.items()}
    if adapter not in MAP_ADAPTERS:
        raise ValueError(f"adapter {adapter!r} has no column in {MAP_PATH.name} (have: {', '.join(MAP_ADAPTERS)})")
    if padchest_matching not in ("exact", "substring"):
        raise ValueError(f"labels.padchest_matching must be 'exact' or 'substring', got {padchest_matching!r}")
    rules = {}
    for finding, row in canonical_map().iterrows():
        sources, approximate = _parse_cell(row[adapter])
        if adapter == "padchest" and padchest_matching == "substring" and row["padchest_substring"]:
            if vocabulary is None:
                raise ValueError("substring matching needs the PadChest vocabulary")
            patterns, _ = _parse_cell(row["padchest_substring"])
            sources = tuple(v for v in vocabulary if any(p in v for p in patterns))
        if sources:
            rules[finding] = SourceRule(finding, sources, approximate)
    return rules


def resolve_label_set(label_set: str | Sequence[str], rules: dict[str, SourceRule]) -> list[str]:
    """A preset name, ``all`` or an explicit list -> ordered canonical findings (validated)."""
    if isinstance(label_set, str):
        if label_set == "all":
            return list(rules)
        presets = label_presets()
        if label_set not in presets:
            raise ValueError(f"unknown label set {label_set!r} (presets: all, {', '.join(presets)})")
        labels = list(presets[label_set]["labels"])
    else:
        labels = list(label_set)
    known = set(canonical_findings()) | set(rules)
    unknown = [f for f in labels if f not in known]
    if unknown:
        raise ValueError(f"label set names unknown canonical finding(s) {unknown}; see {MAP_PATH}")
    dup = sorted({f for f in labels if labels.count(f) > 1})
    if dup:
        raise ValueError(f"label set lists {dup} more than once")
    return labels


def overlap_labels(target_labels: Sequence[str], source_labels: Sequence[str]) -> list[str]:
    """Target findings the source also has, in target order (the MIMIC-overlap subsets).

    A laterality finding (e.g. ``pleural_effusion_right``) whose merged ``parent`` is in the source
    contributes the parent once, as in the study's UKA overlap (left and right merged).
    """
    cmap = canonical_map()
    source = set(source_labels)
    out: list[str] = []
    for label in target_labels:
        if label in source:
            match = label
        else:
            parent = cmap["parent"].get(label, "")
            match = parent if parent and parent in source else None
        if match is not None and match not in out:
            out.append(match)
    return out
