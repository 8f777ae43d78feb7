"""Per-dataset harmonisation summary: rows kept and excluded (with reasons), counts per split and
prevalence per label and split, as one long CSV table and a Markdown page."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from cxrbench.labels.harmonise import Harmonised

_logger = logging.getLogger(__name__)

__all__ = ["summary_markdown", "summary_table"]

SUMMARY_COLUMNS = ["section", "name", "split", "count", "patients", "positive", "negative", "missing", "prevalence"]
_SPLITS = ("train", "val", "test", "all")


def summary_table(h: Harmonised) -> pd.DataFrame:
    """Long table: sections ``rows`` (listed/kept), ``exclusion`` (per reason), ``split``, ``label``.

    ``prevalence`` = positive / (positive + negative); NaN labels (masked or not assessed) are
    counted as ``missing`` and left out of the denominator.
    """
    df = h.labels
    rows: list[dict] = [
        {"section": "rows", "name": "listed", "split": "all", "count": h.n_listed},
        {"section": "rows", "name": "kept", "split": "all", "count": len(df), "patients": df["patient_id"].nunique()},
    ]
    rows += [{"section": "exclusion", "name": reason, "split": "all", "count": count}
             for reason, count in sorted(h.exclusions.items())]
    for split in _SPLITS:
        part = df if split == "all" else df[df["split"] == split]
        rows.append({"section": "split", "name": split, "split": split, "count": len(part),
                     "patients": part["patient_id"].nunique()})
        for label in h.label_set:
            y = part[f"y_{label}"].to_numpy()
            pos, neg = int((y == 1).sum()), int((y == 0).sum())
            rows.append({"section": "label", "name": label, "split": split, "count": len(part), "positive": pos,
                         "negative": neg, "missing": int(np.isnan(y).sum()),
                         "prevalence": pos / (pos + neg) if pos + neg else np.nan})
    out = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    for col in ("count", "patients", "positive", "negative", "missing"):
        out[col] = out[col].astype("Int64")
    return out


def summary_markdown(h: Harmonised, table: pd.DataFrame, *, title: str) -> str:
    """The summary as a Markdown page (tables of rows, exclusions, splits and label prevalence)."""
    lines = [f"# Label summary: {title}", "", f"Listed images: {h.n_listed}; kept: {len(h.labels)}.", ""]
    excl = table[table["section"] == "exclusion"]
    lines += ["## Exclusions", "", "| reason | images |", "|---|---|"]
    lines += [f"| {r.name} | {r.count} |" for r in excl.itertuples()] or ["| (none) | 0 |"]
    lines += ["", "## Splits", "", "| split | images | patients |", "|---|---|---|"]
    lines += [f"| {r.name} | {r.count} | {r.patients} |" for r in table[table["section"] == "split"].itertuples()]
    lab = table[table["section"] == "label"]
    lines += ["", "## Prevalence (positive / assessed)", "",
              "| label | " + " | ".join(_SPLITS) + " |", "|---|" + "---|" * len(_SPLITS)]
    for label in h.label_set:
        cells = []
        for split in _SPLITS:
            r = lab[(lab["name"] == label) & (lab["split"] == split)].iloc[0]
            cells.append("n/a" if pd.isna(r.prevalence) else f"{r.prevalence:.3f} ({r.positive})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    notes = []
    if h.approximate:
        notes.append(f"Approximate mappings (see resources/canonical_findings.csv): {', '.join(h.approximate)}.")
    if h.not_assessed:
        notes.append(f"Not assessed by this dataset (all NaN): {', '.join(h.not_assessed)}.")
    if notes:
        lines += ["", "## Notes", "", *notes]
    return "\n".join(lines) + "\n"
