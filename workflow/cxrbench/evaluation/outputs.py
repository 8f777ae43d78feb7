"""Names of every evaluation output inside the folders ``cxrbench.paths.Layout`` assigns, their
descriptions, and the generated ``README.md`` that describes the files of one results folder.

The rules (evaluate.smk) and the CLI modules both build paths with these functions, so a file name
is decided here once. ``docs/outputs.md`` documents the same files for users (a test keeps the two
in step).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_logger = logging.getLogger(__name__)

__all__ = [
    "DESCRIPTIONS",
    "FIGURE_FORMATS",
    "GRID_FIGURES",
    "GRID_TABLES",
    "TABLE_FORMATS",
    "StatsFiles",
    "describe",
    "figure_files",
    "figure_names",
    "grid_table_file",
    "results_readme",
    "results_readme_path",
    "stats_files",
    "table_files",
    "table_names",
]

TABLE_FORMATS = ("csv", "md", "tex")
FIGURE_FORMATS = ("pdf", "png")


@dataclass(frozen=True)
class StatsFiles:
    """The files ``cxrbench evaluate`` writes into ``Layout.stats_dir(cell)``."""

    indices: Path
    bootstrap_json: Path
    units: Path
    metrics_parquet: Path
    metrics_csv: Path
    resamples: Path
    tests: Path
    roc: Path

    def all(self) -> list[Path]:
        return [getattr(self, f) for f in self.__dataclass_fields__]


def stats_files(stats_dir: str | Path) -> StatsFiles:
    """File names inside one cell's stats folder."""
    d = Path(stats_dir)
    return StatsFiles(
        indices=d / "bootstrap_indices.npy",
        bootstrap_json=d / "bootstrap.json",
        units=d / "bootstrap_units.parquet",
        metrics_parquet=d / "metrics.parquet",
        metrics_csv=d / "metrics.csv",
        resamples=d / "resamples.parquet",
        tests=d / "tests.parquet",
        roc=d / "roc.parquet",
    )


def table_names(datasets: list[str], *, overlap: bool) -> list[str]:
    """Stems of the tables ``cxrbench aggregate`` writes (each in every TABLE_FORMATS)."""
    names = ["auroc_main", "pairwise_tests"]
    if overlap:
        names.append("auroc_overlap")
    return names + [f"auroc_per_label_{ds}" for ds in datasets]


def figure_names(datasets: list[str]) -> list[str]:
    """Stems of the figures ``cxrbench aggregate`` writes (each in every FIGURE_FORMATS)."""
    return ["forest"] + [f"{kind}_{ds}" for ds in datasets for kind in ("roc", "heatmap")]


# What `cxrbench grid` writes when the grid has more than one cell per dataset: CSV tables, figures as
# FIGURE_FORMATS (each of the five always, whatever the axes).
GRID_TABLES = ("grid", "grid_deltas")
GRID_FIGURES = ("grid_size", "grid_label_efficiency", "grid_regimes", "grid_seed_spread", "grid_headline")


def grid_table_file(tables_dir: str | Path, name: str) -> Path:
    """``<tables>/<name>.csv`` for a name in GRID_TABLES."""
    return Path(tables_dir) / f"{name}.csv"


def table_files(tables_dir: str | Path, name: str) -> dict[str, Path]:
    return {ext: Path(tables_dir) / f"{name}.{ext}" for ext in TABLE_FORMATS}


def figure_files(figures_dir: str | Path, name: str) -> dict[str, Path]:
    return {ext: Path(figures_dir) / f"{name}.{ext}" for ext in FIGURE_FORMATS}


# File-name pattern (as in docs/outputs.md) -> one-line description.
DESCRIPTIONS: dict[str, str] = {
    "stats/<cell>/bootstrap_indices.npy": "(B x U) int64 resampling indices over units (images or patients), shared by every initialisation",
    "stats/<cell>/bootstrap.json": "seed, its derivation, B, resampling unit, unit count and SHA-256 of the ordered unit ids",
    "stats/<cell>/bootstrap_units.parquet": "the ordered unit ids (image_id or patient_id) the indices point into",
    "stats/<cell>/metrics.parquet": "per-run, per-label and macro point metrics on test plus bootstrap mean, SD and 95% CI",
    "stats/<cell>/metrics.csv": "the same table as metrics.parquet, as CSV",
    "stats/<cell>/resamples.parquet": "per-resample AUROC of every run, label and the macro mean (long format)",
    "stats/<cell>/tests.parquet": "paired bootstrap tests for every pair of runs, per shared label and macro (raw p)",
    "stats/<cell>/roc.parquet": "test-set ROC curve points (fpr, tpr, threshold) of every run and label",
    "tables/auroc_main.{csv,md,tex}": "macro AUROC (%) mean +/- SD per dataset and initialisation; the study's one-sided p and the two-sided BH p vs the reference",
    "tables/auroc_overlap.{csv,md,tex}": "each pipeline initialisation vs the others on the labels both runs share",
    "tables/auroc_per_label_<ds>.{csv,md,tex}": "per-label AUROC (%) mean +/- SD per initialisation, with p vs the reference",
    "tables/pairwise_tests.{csv,md,tex}": "every paired test of every dataset, with Benjamini-Hochberg adjusted p",
    "figures/roc_<ds>.{pdf,png}": "test ROC curves per label, one colour per initialisation (legend: bootstrap mean AUROC)",
    "figures/heatmap_<ds>.{pdf,png}": "bootstrap mean AUROC per label (rows) and initialisation (columns), one colour scale for all datasets",
    "figures/forest.{pdf,png}": "macro delta-AUROC (init - reference) with 95% CI per dataset",
    "tables/grid.csv": "AUROC with 95% CI per init, dataset, size, regime, label fraction, seed (or pooled) and label (or macro)",
    "tables/grid_deltas.csv": "delta-AUROC between every compared pair of initialisations along each grid axis, with CI and p",
    "figures/grid_size.{pdf,png}": "macro AUROC vs image size, one line per initialisation, one panel per dataset",
    "figures/grid_label_efficiency.{pdf,png}": "macro AUROC vs label fraction (log scale), one line per initialisation",
    "figures/grid_regimes.{pdf,png}": "macro AUROC per training regime and initialisation",
    "figures/grid_seed_spread.{pdf,png}": "macro AUROC of every seed replicate per initialisation",
    "figures/grid_headline.{pdf,png}": "delta-AUROC of the headline pair along each grid axis with 95% CI",
    "external/<run>/on-<ds>/predictions.parquet": "a run's test predictions on another dataset, on the labels the two share",
    "external/<run>/on-<ds>/external.json": "that pair's shared labels with their merging rule, the run's validation thresholds, provenance",
    "tables/label_overlap.csv": "the shared canonical labels of every (train, test) dataset pair and how each is obtained",
    "tables/external.csv": "AUROC with 95% CI per init, train dataset, test dataset, grid cell and label (or macro); the diagonal is in-domain",
    "tables/external_tests.csv": "paired delta-AUROC tests between initialisations per (train, test) pair, BH over the matrix",
    "tables/external_gap.csv": "generalisation gap (in-domain minus mean external AUROC) per run, with 95% CI",
    "figures/external_auroc_<init>.{pdf,png}": "train x test heatmap of macro AUROC on shared labels, per initialisation",
    "figures/external_delta_<a>_vs_<b>.{pdf,png}": "train x test heatmap of macro delta-AUROC (a - b) with significance marks",
    "figures/external_gap.{pdf,png}": "generalisation gap per initialisation and train dataset, with 95% CI",
    "README.md": "this file: the headline numbers, what every evaluation output is, and the statistical settings used",
}


def describe(relative: str) -> str:
    """Description of a file given by its path relative to the results folder (``<cell>`` spans the folder levels
    of a cell, ``<ds>`` one name part)."""
    parts = Path(relative).parts
    name = Path(relative).name
    for pattern, text in DESCRIPTIONS.items():
        p_parts = Path(pattern).parts
        if "<cell>" in p_parts:  # any folder depth: a stats folder given to `cxrbench aggregate` need not be a cell's
            if len(parts) < 3 or parts[0] != p_parts[0]:
                continue
        elif len(p_parts) != len(parts) or (len(parts) > 1 and p_parts[0] != parts[0]):
            continue
        stem, _, exts = p_parts[-1].partition(".")
        exts = exts.strip("{}").split(",")
        n_stem, _, n_ext = name.partition(".")
        prefix = stem.split("<ds>")[0]
        stem_ok = n_stem == stem if "<ds>" not in stem else n_stem.startswith(prefix)
        if stem_ok and n_ext in exts:
            return text
    raise KeyError(f"no description for output {relative!r}")


def results_readme_path(layout: Any) -> Path:
    """Where the generated README goes (decided by ``cxrbench.paths.Layout.results_readme``)."""
    return Path(layout.results_readme())


def results_readme(settings: dict[str, Any], files: list[str], *, headline: Any) -> str:
    """Markdown for the results folder: the headline table (macro AUROC per initialisation and dataset,
    with the reason for every n/a), the statistical settings, then every evaluation output.

    ``headline`` is the ``auroc_main`` ``tables.Table`` (display and note).
    """
    # Imported here: the rules import this module for file names at parse time, and tables pulls in scipy and
    # sklearn (about 1.5 s for every `snakemake` invocation, dry runs included).
    from cxrbench.evaluation.tables import family_text

    ev = settings["evaluation"]
    table = headline.display.to_markdown(index=False, disable_numparse=True) if not headline.display.empty \
        else "_(no runs)_"
    lines = [
        "# Evaluation results",
        "",
        "## Headline: macro AUROC per initialisation and dataset",
        "",
        table,
        "",
        headline.note,
        "",
        "Per-label results: `tables/auroc_per_label_<dataset>.md`; figures: `figures/`; every test:",
        "`tables/pairwise_tests.md`. Generated by `cxrbench aggregate`; the full description of every results",
        "file, including the other stages, is in the repository's `docs/outputs.md`.",
        "",
        "## Statistical settings",
        "",
        (f"- Paired bootstrap: {ev['n_bootstrap']} resamples of the test set, unit `{ev['resample_unit']}`, "
         f"seed derived from master seed {settings['seed']} and the dataset name (see each `bootstrap.json`)."),
        f"- Youden thresholds: `{ev['threshold_mode']}` mode.",
        "- AUROC reported as bootstrap mean +/- SD (ddof=1) with 95% percentile CI in every table and figure;",
        "  point estimates on the full test set are in `metrics.*`.",
        (f"- p-values: study one-sided `1 - mean(AUC_a > AUC_b)` both ways, two-sided `min(1, 2 min(p))`; "
         f"Benjamini-Hochberg family `{ev['fdr_family']}` ({family_text(ev['fdr_family'])}), alpha {ev['alpha']}."),
        f"- Reference initialisation: `{settings['reference_init']}`.",
        f"- Per-label estimates from fewer than {ev['min_positives']} test positives (or negatives) are marked.",
        "",
        "## Files",
        "",
        "| file | content |",
        "|---|---|",
    ]
    lines += [f"| `{f}` | {describe(f)} |" for f in sorted(files)]
    lines += ["", "Settings:", "", "```json", json.dumps(settings, indent=2, sort_keys=True), "```", ""]
    return "\n".join(lines)
