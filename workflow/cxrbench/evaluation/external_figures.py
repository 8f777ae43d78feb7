"""External-validation figures: the train x test macro-AUROC matrix per initialisation, the ΔAUROC matrix per
pair of initialisations with significance marks, and the generalisation gap per initialisation.

Style, colours per initialisation, display names, footnote markers and byte-stable saving are those of
``cxrbench.evaluation.figures`` / ``display``. One panel per grid cell (size, regime, label fraction, seed)
present in the results, so every figure has a fixed name whatever the grid.
"""

from __future__ import annotations

import logging
import math
import textwrap
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless, deterministic rendering

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from cxrbench.evaluation.comparisons import oriented
from cxrbench.evaluation.display import NO_RUN, NOT_IN_SET, UNDEFINED, Footnotes, no_run_reason
from cxrbench.evaluation.external import AXES
from cxrbench.evaluation.figures import STYLE, init_colours

_logger = logging.getLogger(__name__)

__all__ = ["auroc_matrix_figure", "delta_limit", "delta_matrix_figure", "gap_figure", "panels_of"]

_DIAGONAL_NOTE = ("Outlined: in-domain (tested on the training dataset, every label of the run, as in the "
                  "in-domain tables); other cells: the labels both datasets share, their number in brackets. One "
                  "colour scale for every initialisation.")


def panels_of(external: pd.DataFrame) -> list[tuple[Any, ...]]:
    """The grid cells (values of ``AXES``) present in ``external.csv``, sorted: one panel each."""
    if external.empty:
        return []
    return sorted({tuple(r) for r in external[list(AXES)].itertuples(index=False)})


def _panel_title(panel: tuple[Any, ...], n_panels: int) -> str:
    size, regime, fraction, seed = panel
    if n_panels == 1 and (regime, float(fraction), seed) == ("finetune", 1.0, 0):
        return f"{size} px"
    return f"{size} px, {regime}\n{100 * float(fraction):g}% of training labels, seed {seed}"


def _in_panel(frame: pd.DataFrame, panel: tuple[Any, ...]) -> pd.DataFrame:
    mask = np.ones(len(frame), dtype=bool)
    for col, value in zip(AXES, panel, strict=True):
        mask &= (frame[col] == value).to_numpy()
    return frame[mask]


def _subplots(n_panels: int, *, width: float, height: float, sharey: bool = False) -> tuple[Figure, list[Axes]]:
    ncols = min(3, max(1, n_panels))
    nrows = max(1, math.ceil(n_panels / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, sharey=sharey)
    for ax in axes.flat[n_panels:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:max(1, n_panels)])


def _matrix_axes(ax: Axes, datasets: Sequence[str]) -> None:
    n = len(datasets)
    ax.set_xticks(range(n), datasets, rotation=30, ha="right")
    ax.set_yticks(range(n), datasets)
    ax.set_xlabel("tested on")
    ax.set_ylabel("trained on")
    ax.tick_params(length=0)
    for k in range(n):  # the diagonal: in-domain results
        ax.add_patch(Rectangle((k - 0.5, k - 0.5), 1, 1, fill=False, edgecolor="black", lw=1.2))


def _missing_reason(notes: Footnotes, *, without_run: Sequence[str], train: str, test: str,
                    shared_pairs: set[tuple[str, str]], pretrain_datasets: dict[str, str]) -> str:
    """The marker of an empty matrix cell, its reason recorded in ``notes``: an initialisation in
    ``without_run`` has no run on ``train``, or the datasets share no label, or the pair was not predicted."""
    if without_run:
        return notes.mark(NO_RUN, no_run_reason(without_run[0], train, pretrain_datasets))
    if train != test and (train, test) not in shared_pairs:
        return notes.mark(NOT_IN_SET, "the two datasets share no label")
    return notes.mark(NO_RUN, "not predicted (no external-prediction job for this pair)")


def _footer(fig: Figure, notes: Footnotes, text: str) -> None:
    """An explanatory line, then the figure's markers and their reasons, under the panels (as figures.py)."""
    lines = [text, *notes.lines()]
    width = max(50, int(fig.get_figwidth() * 20))  # characters of 6-pt text across the figure
    fig.supxlabel("\n".join(textwrap.fill(line, width) for line in lines), x=0.01, ha="left", fontsize=6,
                  color="0.25")


def auroc_matrix_figure(
    external: pd.DataFrame,
    *,
    init: str,
    datasets: Sequence[str],
    scale: tuple[float, float],
    shared_pairs: set[tuple[str, str]],
    pretrain_datasets: dict[str, str],
) -> Figure:
    """Macro AUROC (%, bootstrap mean) of ``init`` trained on each dataset (rows) and tested on each (columns),
    on the colour ``scale`` shared by every initialisation's matrix."""
    macro = external[(external["level"] == "macro") & (external["init"] == init)]
    panels = panels_of(external)
    notes = Footnotes()
    vmin, vmax = scale
    n = len(datasets)
    with plt.style.context(STYLE):
        # At least 4.5 in wide: the two-line title and the colour bar's label fit for a 2-3 dataset matrix too.
        fig, axes = _subplots(len(panels), width=max(4.5, 1.3 + 0.62 * n), height=1.1 + 0.5 * n)
        im = None
        for ax, panel in zip(axes, panels or [None]):
            rows = _in_panel(macro, panel) if panel is not None else macro.iloc[:0]
            ran = set(rows.loc[rows["in_domain"].astype(bool), "train_dataset"])
            grid = np.full((n, n), np.nan)
            count = np.zeros((n, n), dtype=int)
            for r in rows.itertuples(index=False):
                if r.train_dataset in datasets and r.test_dataset in datasets:
                    i, j = datasets.index(r.train_dataset), datasets.index(r.test_dataset)
                    grid[i, j], count[i, j] = 100 * r.auroc_boot_mean, int(r.n_labels)
            cmap = plt.get_cmap().with_extremes(bad="0.9")
            im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=vmin, vmax=vmax)
            for (i, j), v in np.ndenumerate(grid):
                have = bool(((rows["train_dataset"] == datasets[i]) & (rows["test_dataset"] == datasets[j])).any())
                if np.isfinite(v):
                    text = f"{v:.1f}" if i == j else f"{v:.1f}\n[{count[i, j]}]"
                    shade = "white" if (v - vmin) / (vmax - vmin) < 0.6 else "black"
                elif have:
                    text, shade = "– " + notes.mark(UNDEFINED, "AUROC undefined: no shared label has both classes "
                                                    "in the test set"), "0.3"
                else:
                    without = [] if datasets[i] in ran else [init]
                    text, shade = "n/a " + _missing_reason(
                        notes, without_run=without, train=datasets[i], test=datasets[j], shared_pairs=shared_pairs,
                        pretrain_datasets=pretrain_datasets), "0.3"
                ax.text(j, i, text, ha="center", va="center", fontsize=6, color=shade, linespacing=0.95)
            _matrix_axes(ax, datasets)
            if panel is not None and len(panels) > 1:
                ax.set_title(_panel_title(panel, len(panels)))
        fig.colorbar(im, ax=axes, label="macro AUROC (%)", shrink=0.8)
        title = f"{init}\nmacro AUROC (%) across datasets, bootstrap mean"
        if len(panels) == 1:
            title += f", {_panel_title(panels[0], 1)}"
        fig.suptitle(title)
        _footer(fig, notes, _DIAGONAL_NOTE)
    return fig


def delta_limit(tests: pd.DataFrame) -> float:
    """One symmetric colour limit (percentage points) for every Δ matrix: the largest |macro Δ|, rounded up."""
    d = tests.loc[tests["level"] == "macro", "delta_mean"].to_numpy(dtype=float) * 100
    d = d[np.isfinite(d)]
    return float(max(1.0, math.ceil(np.abs(d).max()))) if d.size else 1.0


def delta_matrix_figure(
    tests: pd.DataFrame,
    *,
    init_a: str,
    init_b: str,
    datasets: Sequence[str],
    panels: Sequence[tuple[Any, ...]],
    limit: float,
    alpha: float,
    shared_pairs: set[tuple[str, str]],
    ran: dict[str, set[tuple[Any, ...]]],
    pretrain_datasets: dict[str, str],
) -> Figure:
    """Macro ΔAUROC (``init_a`` − ``init_b``, percentage points) per train x test cell on the same test
    images; ``*`` marks a Benjamini-Hochberg adjusted two-sided p ≤ ``alpha``.

    ``ran[init]`` holds the (train dataset, *grid cell) with an in-domain run of ``init``: it tells why a cell
    has no test."""
    macro = tests[tests["level"] == "macro"]
    notes = Footnotes()
    n = len(datasets)
    with plt.style.context(STYLE):
        # At least 4.5 in wide: the two-line title and the colour bar's label fit for a 2-3 dataset matrix too.
        fig, axes = _subplots(len(panels), width=max(4.5, 1.3 + 0.62 * n), height=1.1 + 0.5 * n)
        im = None
        for ax, panel in zip(axes, panels or [None]):
            rows = oriented(_in_panel(macro, panel), init_a, init_b) if panel is not None else macro.iloc[:0]
            grid = np.full((n, n), np.nan)
            text = np.full((n, n), "", dtype=object)
            for r in rows.itertuples(index=False):
                if r.train_dataset not in datasets or r.test_dataset not in datasets:
                    continue
                i, j = datasets.index(r.train_dataset), datasets.index(r.test_dataset)
                grid[i, j] = 100 * r.delta_mean
                text[i, j] = (f"{grid[i, j]:+.1f}".replace("-", "−") + ("*" if bool(r.significant) else "")
                              if np.isfinite(grid[i, j]) else "– " + notes.mark(UNDEFINED, "no shared label with "
                                                                                 "both classes in the test set"))
            im = ax.imshow(np.ma.masked_invalid(grid), cmap=plt.get_cmap("RdBu_r").with_extremes(bad="0.9"),
                           vmin=-limit, vmax=limit)
            for (i, j), v in np.ndenumerate(grid):
                label = text[i, j]
                if not label:
                    without = [x for x in (init_a, init_b) if (datasets[i], *(panel or ())) not in ran.get(x, set())]
                    label = "n/a " + _missing_reason(notes, without_run=without, train=datasets[i], test=datasets[j],
                                                     shared_pairs=shared_pairs, pretrain_datasets=pretrain_datasets)
                strong = np.isfinite(v) and abs(v) > 0.6 * limit
                ax.text(j, i, label, ha="center", va="center", fontsize=6,
                        color="white" if strong else ("black" if np.isfinite(v) else "0.3"))
            _matrix_axes(ax, datasets)
            if panel is not None and len(panels) > 1:
                ax.set_title(_panel_title(panel, len(panels)))
        fig.colorbar(im, ax=axes, label="Δ macro AUROC (pp)", shrink=0.8)
        title = f"{init_a} − {init_b}\nΔ macro AUROC (percentage points), same test images"
        if len(panels) == 1:
            title += f", {_panel_title(panels[0], 1)}"
        fig.suptitle(title)
        star = (f"*: two-sided paired bootstrap p ≤ {alpha:g} after Benjamini-Hochberg over this matrix "
                "(macro tests of this pair and grid cell)")
        _footer(fig, notes, f"{star}. Outlined: in-domain; every Δ is on the labels both runs share.")
    return fig


def gap_figure(
    gap: pd.DataFrame,
    *,
    inits: Sequence[str],
    datasets: Sequence[str],
    panels: Sequence[tuple[Any, ...]],
    pretrain_datasets: dict[str, str],
) -> Figure:
    """Generalisation gap per training dataset and initialisation: in-domain minus mean external macro AUROC
    (percentage points, on each pair's shared labels) with 95% bootstrap CIs."""
    colours = init_colours(list(inits))
    mean = gap[gap["test_dataset"] == "mean"]
    notes = Footnotes()
    width = 0.8 / max(1, len(inits))
    with plt.style.context(STYLE):
        fig, axes = _subplots(len(panels), width=max(5.0, 1.4 + 0.3 * len(datasets) * max(2, len(inits))), height=3.2,
                              sharey=True)
        for ax, panel in zip(axes, panels or [None]):
            rows = _in_panel(mean, panel) if panel is not None else mean.iloc[:0]
            ax.axhline(0.0, color="0.5", lw=0.8)
            for k, init in enumerate(inits):
                for i, ds in enumerate(datasets):
                    x = i - 0.4 + width * (k + 0.5)
                    r = rows[(rows["init"] == init) & (rows["train_dataset"] == ds)]
                    if r.empty or not np.isfinite(r.iloc[0]["gap_mean"]):
                        reason = (no_run_reason(init, ds, pretrain_datasets) if pretrain_datasets.get(init) == ds
                                  else "no external test (no other dataset shares a label, or none predicted)")
                        ax.text(x, 0, f" n/a {notes.mark(NO_RUN, reason)}", rotation=90, ha="center",
                                va="bottom", fontsize=6, color=colours[init])
                        continue
                    g = 100 * r.iloc[0][["gap_mean", "gap_ci_low", "gap_ci_high"]].to_numpy(dtype=float)
                    ax.bar(x, g[0], width=width * 0.9, color=colours[init], label=init if i == 0 else None)
                    ax.errorbar(x, g[0], yerr=[[g[0] - g[1]], [g[2] - g[0]]], color="black", lw=0.8, capsize=1.5)
            ax.set_xticks(range(len(datasets)), datasets, rotation=30, ha="right")
            ax.set_xlabel("trained on")
            if ax is axes[0]:
                ax.set_ylabel("in-domain − mean external\nmacro AUROC (percentage points)")
            if panel is not None and len(panels) > 1:
                ax.set_title(_panel_title(panel, len(panels)))
        handles = [plt.Rectangle((0, 0), 1, 1, color=colours[i]) for i in inits]
        fig.legend(handles, list(inits), loc="outside right center", title="initialisation")
        title = "Generalisation gap\nin-domain minus mean external macro AUROC, 95% bootstrap CI"
        if len(panels) == 1:
            title += f", {_panel_title(panels[0], 1)}"
        fig.suptitle(title)
        _footer(fig, notes, "Per test dataset, in-domain and external AUROC average the labels the two datasets "
                            "share; a bar averages the test datasets resample by resample; positive = worse on other "
                            "datasets.")
    return fig
