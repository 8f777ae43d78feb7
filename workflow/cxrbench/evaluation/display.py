"""How evaluation outputs name findings and explain gaps: display names from the canonical map, and
footnote markers that carry the reason for every "n/a" and every unstable estimate into the table or
figure itself (a reader should never need the docs to know why a cell is empty).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

from cxrbench.evaluation.metrics import MACRO

_logger = logging.getLogger(__name__)

__all__ = [
    "FEW",
    "NOT_IN_SET",
    "NO_RUN",
    "UNDEFINED",
    "Footnotes",
    "display_name",
    "few_positives",
    "no_run_reason",
]

# Marker -> why a cell is empty or flagged. Letters, not symbols: they survive Markdown, LaTeX and CSV.
NO_RUN = "a"
UNDEFINED = "b"
NOT_IN_SET = "c"
FEW = "d"


@functools.cache
def _canonical_display() -> dict[str, str]:
    """canonical name -> the first study name written for people (has a capital), if the map gives one."""
    from cxrbench.labels.canonical import canonical_map  # labels import pandas/yaml only; kept lazy anyway

    out = {}
    for name, study_names in canonical_map()["study_names"].items():
        readable = [s for s in study_names.split("|") if s and any(c.isupper() for c in s)]
        if readable:
            out[name] = readable[0]
    return out


def display_name(label: str) -> str:
    """A finding as a reader sees it: the canonical map's study name (``Pleural effusion``) when it has
    one, else the snake_case name made readable (``support_devices`` -> ``Support devices``)."""
    if label == MACRO:
        return "Macro mean"
    known = _canonical_display().get(label)
    if known:
        return known
    if any(c.isupper() for c in label):  # already a readable source name (e.g. a generic_csv column)
        return label
    text = label.replace("_", " ")
    return text[:1].upper() + text[1:]


def few_positives(n_pos: float, n_neg: float, *, min_positives: int) -> bool:
    """True when a label's test AUROC rests on fewer than ``min_positives`` positives (or negatives)."""
    return bool(min(n_pos, n_neg) < min_positives)


def no_run_reason(init: str, dataset: str, pretrain_datasets: dict[str, str]) -> str:
    """Why ``init`` has no run on ``dataset`` (the only case the workflow skips: a chain's own pre-training set)."""
    if pretrain_datasets.get(init) == dataset:
        return f"no run: {dataset} is the pre-training set of {init}, so it is not fine-tuned there"
    return f"no run of {init} on {dataset}"


@dataclass
class Footnotes:
    """Markers used in one table or figure, each with its reason, in order of first use."""

    reasons: dict[str, list[str]] = field(default_factory=dict)

    def mark(self, marker: str, reason: str) -> str:
        """Record ``reason`` under ``marker`` and return the marker as printed in a cell: ``(a)``."""
        seen = self.reasons.setdefault(marker, [])
        if reason not in seen:
            seen.append(reason)
        return f"({marker})"

    def text(self) -> str:
        """One sentence per marker, e.g. ``(a) no run: mimic is the pre-training set of mimic_sl.``"""
        return " ".join(f"({m}) {'; '.join(r)}." for m, r in sorted(self.reasons.items()))

    def lines(self) -> list[str]:
        """The same notes as a list of lines (for figures)."""
        return [f"({m}) {'; '.join(r)}" for m, r in sorted(self.reasons.items())]
