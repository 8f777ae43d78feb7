"""The short summary printed when a workflow run succeeds (the Snakefile's ``onsuccess`` handler):
where the tables, figures and report are, the headline macro AUROC per initialisation and dataset,
and what was quarantined or skipped on the way.

It only reads files the run wrote (``tables/auroc_main.csv``, each dataset's ``rejected.parquet``);
whatever is missing (a run that requested only earlier stages) is said, never an error.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from cxrbench.evaluation.display import no_run_reason
from cxrbench.evaluation.outputs import table_files
from cxrbench.evaluation.tables import format_p
from cxrbench.paths import Layout

_logger = logging.getLogger(__name__)

__all__ = ["run_summary"]


def _headline(main_csv: Path, *, datasets: list[str], inits: list[str], pretrain_datasets: dict[str, str],
              n_resamples: int) -> list[str]:
    """Macro AUROC (%) per dataset (rows) and initialisation (columns), p vs the reference in brackets."""
    df = pd.read_csv(main_csv)
    if df.empty:
        return ["  (no evaluated runs)"]
    ref = str(df["reference"].iloc[0])
    width = max(8, *(len(i) + 12 for i in inits))
    lines = ["  " + "dataset".ljust(12) + "".join(i.rjust(width) for i in inits)]
    skipped = []
    for ds in datasets:
        cells = []
        for init in inits:
            r = df[(df["dataset"] == ds) & (df["init"] == init)]
            if r.empty:
                cells.append("n/a")
                skipped.append(no_run_reason(init, ds, pretrain_datasets))
                continue
            r = r.iloc[0]
            text = f"{100 * r['auroc_mean']:.1f}"
            if init != ref and pd.notna(r.get("p_two_sided_bh")):
                text += f" (p {format_p(r['p_two_sided_bh'], n_resamples=n_resamples)})"
            cells.append(text)
        lines.append("  " + ds.ljust(12) + "".join(c.rjust(width) for c in cells))
    lines.append(f"  bootstrap mean, %; p: two-sided, Benjamini-Hochberg adjusted, vs {ref}")
    lines += [f"  skipped: {s}" for s in skipped]
    return lines


def _quarantine(layout: Layout, *, datasets: list[str], variant: str) -> list[str]:
    """One line per dataset with rejected images: how many, and the reasons with their counts."""
    lines = []
    for ds in datasets:
        path = layout.rejected(ds, variant)
        if not path.is_file():
            continue
        rejected = pd.read_parquet(path, columns=["reason"])
        if rejected.empty:
            continue
        reasons = ", ".join(f"{reason} ({n})" for reason, n in rejected["reason"].value_counts().items())
        lines.append(f"  {ds}: {len(rejected)} image(s) quarantined: {reasons} -> {path}")
    return lines or ["  no image quarantined"]


def run_summary(layout: Layout, *, datasets: list[str], inits: list[str], variant: str,
                pretrain_datasets: dict[str, str], n_resamples: int) -> str:
    """The end-of-run summary as text (the caller prints it)."""
    main_csv = table_files(layout.tables_dir(), "auroc_main")["csv"]
    lines = ["", "cxrbench: run finished."]
    if main_csv.is_file():
        lines += ["Macro AUROC per initialisation and dataset:",
                  *_headline(main_csv, datasets=datasets, inits=inits, pretrain_datasets=pretrain_datasets,
                            n_resamples=n_resamples)]
        lines += [
            f"Results overview: {layout.results_readme()}",
            f"Tables: {layout.tables_dir()}/  (Markdown, LaTeX, CSV)",
            f"Figures: {layout.figures_dir()}/  (PDF, PNG)",
            "Report: run `snakemake --report report.zip` to bundle tables and figures",
        ]
    else:
        # e.g. only labels or preprocessing were requested: say where the tables will come from
        lines.append(f"No evaluation tables yet ({main_csv} is written by the `aggregate` rule).")
    lines += ["Preprocessing:", *_quarantine(layout, datasets=datasets, variant=variant)]
    return "\n".join(lines) + "\n"
