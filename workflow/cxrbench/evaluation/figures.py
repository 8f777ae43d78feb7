"""Publication figures (matplotlib, Agg): ROC curves, per-label AUROC heatmaps and a ΔAUROC forest plot.

Every figure uses ``resources/cxrbench.mplstyle`` and is saved as PDF and PNG without time stamps or
software tags, so the same statistics give byte-identical files. Each initialisation keeps one
Okabe–Ito colour (its position in the config) across all figures.
"""

from __future__ import annotations

import logging
import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless, deterministic rendering on clusters and CI

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cxrbench.config import RESOURCES
from cxrbench.evaluation.comparisons import oriented
from cxrbench.evaluation.display import (
    FEW,
    NO_RUN,
    NOT_IN_SET,
    UNDEFINED,
    Footnotes,
    display_name,
    few_positives,
    no_run_reason,
)
from cxrbench.evaluation.metrics import MACRO

_logger = logging.getLogger(__name__)
# fontTools logs every glyph at INFO while matplotlib subsets fonts into the PDFs; keep job logs readable.
logging.getLogger("fontTools").setLevel(logging.WARNING)

__all__ = ["STYLE", "forest_figure", "heatmap_figure", "heatmap_scale", "init_colours", "roc_figure", "save_figure"]

STYLE = RESOURCES / "cxrbench.mplstyle"

# Metadata that would change between runs or machines; None removes the entry.
_METADATA = {"pdf": {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None},
             "png": {"Software": None}}


def init_colours(inits: list[str]) -> dict[str, str]:
    """One colour of the style's cycle per initialisation, by config position."""
    with plt.style.context(STYLE):
        cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {init: cycle[i % len(cycle)] for i, init in enumerate(inits)}


def _footnotes(fig: Figure, notes: Footnotes) -> None:
    """Print the figure's markers and their reasons under the panels (constrained layout makes room)."""
    if notes.reasons:
        fig.supxlabel("\n".join(textwrap.fill(line, 110) for line in notes.lines()), x=0.01, ha="left",
                      fontsize=6, color="0.25")


def roc_figure(roc: pd.DataFrame, *, dataset: str, inits: list[str], metrics: pd.DataFrame,
               min_positives: int) -> Figure:
    """ROC curves of one dataset: one panel per label (every label, also those without a curve), one line
    per initialisation. The legend, under each panel so that it never covers a curve, gives the bootstrap
    mean AUROC (%), the estimate every table reports."""
    colours = init_colours(inits)
    m = metrics[(metrics["dataset"] == dataset) & (metrics["label"] != MACRO)]
    labels = list(dict.fromkeys(m["label"]))
    ran = set(m["init"])
    notes = Footnotes()
    ncols = min(4, max(1, len(labels)))
    nrows = max(1, math.ceil(len(labels) / ncols))
    with plt.style.context(STYLE):
        fig, axes = plt.subplots(nrows, ncols, figsize=(2.0 * ncols, 2.55 * nrows + 0.5), squeeze=False)
        for ax in axes.flat[len(labels):]:
            ax.set_visible(False)
        for ax, label in zip(axes.flat, labels):
            rows = m[m["label"] == label]
            n_pos, n_neg = int(rows["n_pos"].iloc[0]), int(rows["n_neg"].iloc[0])
            title = f"{display_name(label)}\nn+ = {n_pos}, n− = {n_neg}"
            if rows["auroc"].isna().all():
                title += " " + notes.mark(UNDEFINED, "no curve: AUROC undefined, the test set has no positive "
                                          "(or no negative) image for this label")
                ax.text(0.5, 0.5, "no positive\ntest image" if n_pos == 0 else "no negative\ntest image",
                        ha="center", va="center", fontsize=7, color="0.35", transform=ax.transAxes)
            elif few_positives(n_pos, n_neg, min_positives=min_positives):
                title += " " + notes.mark(FEW, f"fewer than {min_positives} test positives (or negatives): "
                                          "unstable estimate")
            ax.plot([0, 1], [0, 1], color="0.7", lw=0.6, ls="--")
            for init in inits:
                pts = roc[(roc["label"] == label) & (roc["init"] == init)]
                if init in ran and rows[rows["init"] == init].empty:  # ran on a label subset without this one
                    ax.plot([], [], color=colours[init], ls=":", label=f"{init} n/a " + notes.mark(
                        NOT_IN_SET, f"not in {init}'s label set (labels shared with its pre-training set)"))
                if pts.empty:
                    continue
                auc = rows.loc[rows["init"] == init, "auroc_boot_mean"]
                text = f"{init} {100 * auc.iloc[0]:.1f}" if len(auc) and np.isfinite(auc.iloc[0]) else init
                ax.plot(pts["fpr"], pts["tpr"], color=colours[init], label=text)
            ax.set_title(title)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_aspect("equal")
            ax.set_xlabel("1 − specificity", fontsize=6)
            ax.set_ylabel("sensitivity", fontsize=6)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), fontsize=6, handlelength=1.0,
                          ncols=1 if len(inits) > 2 else len(inits), columnspacing=0.8)
        fig.suptitle(f"{dataset}: test ROC curves (legend: AUROC %, bootstrap mean)")
        _footnotes(fig, notes)
    return fig


def heatmap_scale(metrics: pd.DataFrame) -> tuple[float, float]:
    """One colour range (AUROC %) for every heatmap of a run: all per-label and macro bootstrap means,
    widened to multiples of 5, so equal colours mean equal AUROC across datasets."""
    values = metrics["auroc_boot_mean"].to_numpy(dtype=float) * 100
    finite = values[np.isfinite(values)]
    if not finite.size:
        return 50.0, 100.0
    lo, hi = 5 * math.floor(finite.min() / 5), 5 * math.ceil(finite.max() / 5)
    return float(lo), float(max(hi, lo + 5))


def heatmap_figure(metrics: pd.DataFrame, *, dataset: str, inits: list[str], scale: tuple[float, float],
                   min_positives: int, pretrain_datasets: dict[str, str]) -> Figure:
    """Bootstrap mean AUROC (%) per label (rows, macro last) and initialisation (columns), on the shared
    colour ``scale`` (see ``heatmap_scale``); every empty or unstable cell carries a footnote marker."""
    m = metrics[metrics["dataset"] == dataset]
    labels = [lab for lab in dict.fromkeys(m["label"]) if lab != MACRO] + [MACRO]
    grid = (m.pivot(index="label", columns="init", values="auroc_boot_mean")
            .reindex(index=labels, columns=inits).to_numpy(dtype=float) * 100)
    counts = m.drop_duplicates("label").set_index("label")[["n_pos", "n_neg"]]
    notes = Footnotes()
    vmin, vmax = scale
    with plt.style.context(STYLE):
        fig, ax = plt.subplots(figsize=(max(3.6, 2.2 + 0.8 * len(inits)), 1.3 + 0.28 * len(labels)))
        cmap = plt.get_cmap().with_extremes(bad="0.88")
        im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax)
        ran = set(m["init"])
        for (r, c), v in np.ndenumerate(grid):
            init, label = inits[c], labels[r]
            if init not in ran:
                text = "n/a " + notes.mark(NO_RUN, no_run_reason(init, dataset, pretrain_datasets))
            elif not np.isfinite(v):
                in_set = len(m[(m["init"] == init) & (m["label"] == label)]) > 0
                text = ("– " + notes.mark(UNDEFINED, "AUROC undefined: no positive (or no negative) test image")
                        if in_set else "n/a " + notes.mark(NOT_IN_SET, "not in the run's label set"))
            else:
                text = f"{v:.1f}"
                if label != MACRO and few_positives(*counts.loc[label], min_positives=min_positives):
                    text += " " + notes.mark(FEW, f"fewer than {min_positives} test positives (or negatives): "
                                             "unstable estimate")
            shade = "white" if np.isfinite(v) and (v - vmin) / (vmax - vmin) < 0.6 else "black"
            ax.text(c, r, text, ha="center", va="center", fontsize=6, color=shade)
        ax.set_xticks(range(len(inits)), inits, rotation=30, ha="right")
        ax.set_yticks(range(len(labels)), [display_name(lab) for lab in labels])
        ax.axhline(len(labels) - 1.5, color="white", lw=1.5)  # separates the macro row
        fig.colorbar(im, ax=ax, label="AUROC (%), same scale in every heatmap", shrink=0.8)
        ax.set_title(f"{dataset}: per-label AUROC (%)\nbootstrap mean")
        _footnotes(fig, notes)
    return fig


def forest_figure(tests: pd.DataFrame, *, inits: list[str], reference: str, datasets: list[str],
                  pretrain_datasets: dict[str, str]) -> Figure:
    """Macro ΔAUROC (init − reference, percentage points) with 95% CI, per dataset and initialisation.

    A (dataset, initialisation) without a comparison keeps its row, marked with the reason."""
    colours = init_colours(inits)
    others = [i for i in inits if i != reference]
    macro = tests[tests["level"] == "macro"]
    notes = Footnotes()
    rows = []
    for ds in datasets:
        ran = set(macro.loc[macro["dataset"] == ds, "init_a"]) | set(macro.loc[macro["dataset"] == ds, "init_b"])
        for init in others:
            o = oriented(macro[macro["dataset"] == ds], init, reference)
            if len(o):
                rows.append((ds, init, o.iloc[0], ""))
            else:
                missing = next((i for i in (init, reference) if i not in ran), None)
                mark = notes.mark(NO_RUN, no_run_reason(missing, ds, pretrain_datasets)) if missing else notes.mark(
                    UNDEFINED, "no shared evaluable label")
                rows.append((ds, init, None, mark))
    with plt.style.context(STYLE):
        fig, ax = plt.subplots(figsize=(5.2, 1.2 + 0.32 * max(1, len(rows))))
        ax.axvline(0.0, color="0.5", lw=0.8)
        shown: set[str] = set()
        for y, (ds, init, r, mark) in enumerate(rows):
            if r is None:
                ax.text(0.0, y, f" n/a {mark}", va="center", ha="left", fontsize=6, color=colours[init])
                continue
            d, lo, hi = 100 * r["delta_mean"], 100 * r["delta_ci_low"], 100 * r["delta_ci_high"]
            ax.errorbar([d], [y], xerr=[[d - lo], [hi - d]], fmt="o", ms=4, capsize=2, color=colours[init],
                        label=None if init in shown else init)
            shown.add(init)
        names = [f"{ds}, {init}" + (f" [{int(r['n_labels'])}]" if r is not None else "") for ds, init, r, _ in rows]
        ax.set_yticks(range(len(rows)), names)
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.set_xlabel(f"Δ macro AUROC vs {reference} (percentage points, 95% CI)")
        if shown:
            ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), title="initialisation")
        elif not rows:
            ax.text(0.5, 0.5, "no comparison with the reference", transform=ax.transAxes, ha="center")
        ax.set_title("Initialisation vs reference, per dataset and initialisation [labels compared]")
        _footnotes(fig, notes)
    return fig


def save_figure(fig: Figure, files: dict[str, Path]) -> None:
    """Save one figure in every format, byte-stable (no dates or software tags), then close it."""
    with plt.style.context(STYLE):
        for ext, path in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, format=ext, metadata=_METADATA[ext])
    plt.close(fig)
