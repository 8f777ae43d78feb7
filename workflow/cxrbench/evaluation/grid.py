"""Statistics of the experiment grid: AUROC per run and seed-pooled, and ΔAUROC of the compared initialisations.

Input is one stats folder per *cell* (:class:`cxrbench.runkey.CellKey`: dataset, size, regime, label fraction,
seed) as ``cxrbench evaluate`` writes it. All cells of a dataset share the test images and the bootstrap indices
(the CLI checks this), so resample ``b`` of one cell and resample ``b`` of another draw the same test images and
every comparison stays paired — across initialisations within a cell, and across seeds.

**Seed pooling.** The cells that differ only in the seed form a *pool*. Within each bootstrap resample the
AUROC (or the ΔAUROC of a pair) is averaged over the pool's seeds; the mean, percentile CI and paired p-values
are then taken over the resamples exactly as for one run (``bootstrap.summarise``, ``comparisons.paired_test``).
Averaging a and b over seeds and then differencing is the same as averaging the per-seed Δ, so the p-value
of a pooled row counts the resamples where the seed-averaged Δ is positive. What the interval holds: the
test-set noise of the seed-averaged models, including how differently the seeds rank the drawn images; the
seeds themselves are not resampled, so a shift of one whole seed moves the pooled estimate (by 1/S of it) but
does not widen its interval. The per-seed rows show that spread (``grid_seed_spread``).

NaN policy: a label undefined on the test set (one class) gets NaN rows, as in ``metrics.parquet``; a resample
where a label has one class is NaN for every seed (same images), so its pooled value is NaN too and
``summarise`` drops it with a warning. Pure functions on DataFrames and arrays; reading happens in ``cli_grid``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.evaluation.bootstrap import macro_over, summarise
from cxrbench.evaluation.comparisons import adjust_bh, paired_test
from cxrbench.evaluation.display import few_positives
from cxrbench.evaluation.metrics import MACRO
from cxrbench.runkey import CellKey

_logger = logging.getLogger(__name__)

__all__ = [
    "DELTA_COLUMNS",
    "GRID_COLUMNS",
    "POOLED",
    "CellStats",
    "GridError",
    "RunResamples",
    "cell_stats",
    "contrasts_from_settings",
    "grid_deltas",
    "grid_table",
    "pools",
]

POOLED = "pooled"  # the seed column of seed-pooled rows
GRID_COLUMNS = ("init", "dataset", "size", "regime", "label_fraction", "seed", "label", "auroc", "ci_low", "ci_high")
DELTA_COLUMNS = (
    "init_a", "init_b", "dataset", "size", "regime", "label_fraction", "seed", "label", "n_labels", "n_seeds",
    "delta", "delta_sd", "ci_low", "ci_high", "p_a_gt_b", "p_b_gt_a", "p_two_sided", "p_adjusted", "significant",
    "fdr_family", "n_paired", "few_positives",
)
# The axes that, with the dataset, identify a pool (every cell axis but the seed).
_POOL_AXES = ("dataset", "size", "regime", "label_fraction")


class GridError(ValueError):
    """The grid's stats folders are inconsistent; the message names the cells and files."""


@dataclass(frozen=True)
class RunResamples:
    """One run's per-resample AUROCs as ``cxrbench evaluate`` wrote them (``resamples.parquet``)."""

    labels: tuple[str, ...]
    auroc: np.ndarray  # (B, L), columns in ``labels`` order
    macro: np.ndarray  # (B,) the run's macro: mean over its defined labels (``evaluate``'s own macro series)
    defined: frozenset[str]  # labels with both classes in the test set
    n_pos: dict[str, int]
    n_neg: dict[str, int]

    def column(self, label: str) -> np.ndarray:
        return self.macro if label == MACRO else self.auroc[:, self.labels.index(label)]


@dataclass(frozen=True)
class CellStats:
    """Every run of one cell, initialisations in config order."""

    key: CellKey
    source: Path
    runs: dict[str, RunResamples]


def cell_stats(key: CellKey, source: Path, resamples: pd.DataFrame, metrics: pd.DataFrame, *,
               inits: Sequence[str], n_resamples: int) -> CellStats:
    """A cell from its ``resamples.parquet`` and ``metrics.parquet`` frames; ``source`` names the folder in errors."""
    where = f"{source} (cell {key.relpath()})"
    for frame, name in ((resamples, "resamples.parquet"), (metrics, "metrics.parquet")):
        datasets = set(frame["dataset"].astype(str))
        if datasets != {key.dataset}:
            raise GridError(f"{where}: {name} holds dataset(s) {sorted(datasets)}, expected {key.dataset!r}")
    unknown = sorted(set(resamples["init"]) - set(inits))
    if unknown:
        raise GridError(f"{where}: resamples.parquet has initialisations {unknown} not among the configured "
                        f"inits {list(inits)}")
    runs = {}
    for init in [i for i in inits if i in set(resamples["init"])]:
        sub = resamples[resamples["init"] == init]
        try:
            wide = sub.pivot(index="resample", columns="label", values="auroc").sort_index()
        except ValueError as exc:
            raise GridError(f"{where}: resamples.parquet has duplicate (init, label, resample) rows for "
                            f"{init!r}") from exc
        if not wide.index.equals(pd.RangeIndex(n_resamples)) or len(sub) != wide.size:
            raise GridError(f"{where}: resamples.parquet for {init!r} does not hold resamples 0..{n_resamples - 1} "
                            f"of every label (bootstrap_indices.npy has {n_resamples})")
        labels = tuple(lab for lab in dict.fromkeys(sub["label"]) if lab != MACRO)
        if MACRO not in wide.columns:
            raise GridError(f"{where}: resamples.parquet has no {MACRO!r} rows for {init!r}")
        m = metrics[(metrics["init"] == init) & (metrics["label"] != MACRO)].set_index("label")
        missing = [lab for lab in labels if lab not in m.index]
        if missing:
            raise GridError(f"{where}: metrics.parquet has no row for {init!r} label(s) {missing}")
        runs[init] = RunResamples(
            labels=labels,
            auroc=wide[list(labels)].to_numpy(dtype=np.float64),
            macro=wide[MACRO].to_numpy(dtype=np.float64),
            defined=frozenset(lab for lab in labels if np.isfinite(m.loc[lab, "auroc"])),
            n_pos={lab: int(m.loc[lab, "n_pos"]) for lab in labels},
            n_neg={lab: int(m.loc[lab, "n_neg"]) for lab in labels},
        )
    return CellStats(key, source, runs)


def pools(cells: Sequence[CellStats]) -> dict[tuple[Any, ...], list[CellStats]]:
    """Cells grouped by everything but the seed (``dataset, size, regime, label_fraction``), in order of first
    appearance; each pool's cells sorted by seed."""
    out: dict[tuple[Any, ...], list[CellStats]] = {}
    for cell in cells:
        axes = cell.key.axes()
        out.setdefault(tuple(axes[a] for a in _POOL_AXES), []).append(cell)
    for key, group in out.items():
        seeds = [c.key.seed for c in group]
        if len(set(seeds)) != len(seeds):
            raise GridError(f"cells of {dict(zip(_POOL_AXES, key))} repeat a seed: {sorted(seeds)}")
        group.sort(key=lambda c: c.key.seed)
    return out


def _summary(values: np.ndarray, *, defined: bool, context: str) -> dict[str, float]:
    # An undefined label is NaN in every resample: NaN row, no warning (as `evaluate` does).
    return summarise(values, context=context) if defined else summarise(values[:0])


def grid_table(cells: Sequence[CellStats], *, inits: Sequence[str]) -> pd.DataFrame:
    """``grid.csv``: bootstrap-mean AUROC and 95% percentile CI per (init, cell, label) and seed-pooled.

    ``macro`` is the run's per-resample mean over its defined labels (``evaluate``'s macro series); the pooled
    value of a resample is the mean over the pool's seeds. Rows: inits in config order, then pools in order of
    first appearance, seeds ascending then ``pooled``, labels in run order then ``macro``.
    """
    rows = []
    for init in inits:
        for pool_key, group in pools(cells).items():
            axes = dict(zip(_POOL_AXES, pool_key))
            runs = [(c.key.seed, c.runs[init]) for c in group if init in c.runs]
            if not runs:
                continue
            labels = runs[0][1].labels
            for seed, run in runs:
                if run.labels != labels:
                    raise GridError(f"{init} on {axes}: seed {seed} has labels {run.labels}, seed {runs[0][0]} "
                                    f"{labels}; the seeds of a cell must predict the same labels")
            for label in (*labels, MACRO):
                defined = [label == MACRO or label in run.defined for _, run in runs]
                series = [run.column(label) for _, run in runs]
                where = f"{init} {axes} {label!r}"
                for (seed, _), values, ok in zip(runs, series, defined):
                    s = _summary(values, defined=ok, context=f"{where} seed {seed}: ")
                    rows.append({"init": init, **axes, "seed": seed, "label": label, "auroc": s["mean"],
                                 "ci_low": s["ci_low"], "ci_high": s["ci_high"]})
                s = _summary(np.mean(series, axis=0), defined=all(defined), context=f"{where} pooled: ")
                rows.append({"init": init, **axes, "seed": POOLED, "label": label, "auroc": s["mean"],
                             "ci_low": s["ci_low"], "ci_high": s["ci_high"]})
    return pd.DataFrame(rows, columns=list(GRID_COLUMNS)).astype({"seed": object})


def contrasts_from_settings(settings: dict[str, Any]) -> list[tuple[str, str]]:
    """The compared pairs (a, b), Δ = a − b: ``settings["contrasts"]``, or every init against the reference."""
    inits = list(settings["inits"])
    reference = settings["evaluation"].get("reference_init") or inits[0]
    given = settings.get("contrasts")
    pairs = [(i, reference) for i in inits if i != reference] if given is None else [tuple(p) for p in given]
    for pair in pairs:
        if len(pair) != 2 or pair[0] == pair[1] or not set(pair) <= set(inits):
            raise GridError(f"contrast {list(pair)!r}: expected two different initialisations among {inits}")
    if len(set(pairs)) != len(pairs):
        raise GridError(f"contrasts repeat a pair: {[list(p) for p in pairs]}")
    return pairs


def _shared(a: RunResamples, b: RunResamples) -> list[str]:
    """Labels both runs predict and both define, in a's order (the labels ``compare_runs`` compares)."""
    return [lab for lab in a.labels if lab in b.labels and lab in a.defined and lab in b.defined]


def _pair_series(a: RunResamples, b: RunResamples, labels: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-resample AUROC of a and b per label and for the macro over ``labels`` (as ``compare_runs``)."""
    out = {lab: (a.column(lab), b.column(lab)) for lab in labels}
    out[MACRO] = (macro_over(a.auroc, [a.labels.index(lab) for lab in labels]),
                  macro_over(b.auroc, [b.labels.index(lab) for lab in labels]))
    return out


def grid_deltas(cells: Sequence[CellStats], *, contrasts: Sequence[tuple[str, str]],
                evaluation: dict[str, Any]) -> pd.DataFrame:
    """``grid_deltas.csv``: ΔAUROC (a − b) per contrast, cell, shared label and macro, per seed and seed-pooled.

    Per seed this is the cell's paired test (equal to its ``tests.parquet`` row); pooled, a and b are averaged
    over the seeds both ran within each resample, then tested the same way. ``p_adjusted`` is the two-sided p,
    Benjamini-Hochberg adjusted within ``evaluation.fdr_family``'s families, taken separately for every
    (size, regime, label_fraction, seed-or-pooled): a family never mixes grid settings or per-seed with pooled
    rows, so adding a value to an axis leaves every existing adjusted p unchanged.
    """
    rows = []
    for (a, b) in contrasts:
        for pool_key, group in pools(cells).items():
            axes = dict(zip(_POOL_AXES, pool_key))
            pairs = [(c.key.seed, c.runs[a], c.runs[b]) for c in group if a in c.runs and b in c.runs]
            if not pairs:
                _logger.info("%s vs %s on %s: not both run; no comparison", a, b, axes)
                continue
            per_seed = []
            for seed, run_a, run_b in pairs:
                shared = _shared(run_a, run_b)
                if shared:
                    per_seed.append((seed, run_a, _pair_series(run_a, run_b, shared)))
                else:
                    _logger.warning("%s vs %s on %s seed %s: no shared label with a defined AUROC", a, b, axes, seed)
            pooled_labels = [lab for lab in _shared(pairs[0][1], pairs[0][2])
                             if all(lab in _shared(ra, rb) for _, ra, rb in pairs)]
            series = [(seed, run_a, s, 1) for seed, run_a, s in per_seed]
            if pooled_labels:
                per = [_pair_series(ra, rb, pooled_labels) for _, ra, rb in pairs]
                pooled = {lab: (np.mean([p[lab][0] for p in per], axis=0), np.mean([p[lab][1] for p in per], axis=0))
                          for lab in (*pooled_labels, MACRO)}
                series.append((POOLED, pairs[0][1], pooled, len(pairs)))
            for seed, run_a, by_label, n_seeds in series:
                for label, (va, vb) in by_label.items():
                    few = label != MACRO and few_positives(run_a.n_pos[label], run_a.n_neg[label],
                                                           min_positives=int(evaluation["min_positives"]))
                    rows.append({"init_a": a, "init_b": b, **axes, "seed": seed, "label": label,
                                 "level": "macro" if label == MACRO else "label",
                                 "n_labels": len(by_label) - 1 if label == MACRO else 1, "n_seeds": n_seeds,
                                 **paired_test(va, vb), "few_positives": few})
    if not rows:
        return pd.DataFrame(columns=list(DELTA_COLUMNS))
    tests = pd.DataFrame(rows)
    family_of = tests[["size", "regime", "label_fraction"]].astype(str).agg("/".join, axis=1) + "/" + \
        tests["seed"].astype(str)
    adjusted = pd.concat([adjust_bh(group, family=evaluation["fdr_family"], alpha=float(evaluation["alpha"]))
                          for _, group in tests.groupby(family_of, sort=False)]).loc[tests.index]
    out = adjusted.rename(columns={"delta_mean": "delta", "delta_ci_low": "ci_low", "delta_ci_high": "ci_high",
                                   "p_two_sided_bh": "p_adjusted"})
    return out[list(DELTA_COLUMNS)].astype({"seed": object})
