"""Publication figures (matplotlib, Agg): ROC curves, per-label AUROC heatmaps and a ΔAUROC forest plot.

Every figure uses ``resources/cxrbench.mplstyle`` and is saved as PDF and PNG without time stamps or
software tags, so the same statistics give byte-identical files. Each initialisation keeps one
Okabe–Ito colour (its position in the config) across all figures.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless, deterministic rendering on clusters and CI

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cxrbench.config import RESOURCES
from cxrbench.evaluation.comparisons import oriented
from cxrbench.evaluation.metrics import MACRO

_logger = logging.getLogger(__name__)
# fontTools logs every glyph at INFO while matplotlib subsets fonts into the PDFs; keep job logs readable.
logging.getLogger("fontTools").setLevel(logging.WARNING)

__all__ = ["STYLE", "forest_figure", "heatmap_figure", "init_colours", "roc_figure", "save_figure"]

STYLE = RESOURCES / "cxrbench.mplstyle"

# Metadata that would change between runs or machines; None removes the entry.
_METADATA = {"pdf": {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None},
             "png": {"Software": None}}


def init_colours(inits: list[str]) -> dict[str, str]:
    """One colour of the style's cycle per initialisation, by config position."""
    with plt.style.context(STYLE):
        cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {init: cycle[i % len(cycle)] for i, init in enumerate(inits)}


def roc_figure(roc: pd.DataFrame, *, dataset: str, inits: list[str], aurocs: pd.DataFrame) -> Figure:
    """ROC curves of one dataset: one panel per label, one line per initialisation (AUROC in the legend)."""
    colours = init_colours(inits)
    labels = list(dict.fromkeys(roc["label"]))
    ncols = min(4, max(1, len(labels)))
    nrows = max(1, math.ceil(len(labels) / ncols))
    with plt.style.context(STYLE):
        fig, axes = plt.subplots(nrows, ncols, figsize=(1.9 * ncols, 1.9 * nrows), squeeze=False,
                                 sharex=True, sharey=True)
        for ax in axes.flat[len(labels):]:
            ax.set_visible(False)
        for ax, label in zip(axes.flat, labels):
            ax.plot([0, 1], [0, 1], color="0.7", lw=0.6, ls="--")
            for init in inits:
                pts = roc[(roc["label"] == label) & (roc["init"] == init)]
                if pts.empty:
                    continue
                auc = aurocs[(aurocs["init"] == init) & (aurocs["label"] == label)]["auroc"]
                text = f"{init} ({auc.iloc[0]:.3f})" if len(auc) else init
                ax.plot(pts["fpr"], pts["tpr"], color=colours[init], label=text, drawstyle="default")
            ax.set_title(label)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_aspect("equal")
            ax.legend(loc="lower right", fontsize=5, handlelength=1.0)
        for ax in axes[-1]:
            ax.set_xlabel("1 − specificity")
        for ax in axes[:, 0]:
            ax.set_ylabel("sensitivity")
        fig.suptitle(f"{dataset}: test ROC curves (AUROC)")
    return fig


def heatmap_figure(metrics: pd.DataFrame, *, dataset: str, inits: list[str]) -> Figure:
    """Bootstrap mean AUROC (%) per label (rows, macro last) and initialisation (columns)."""
    m = metrics[metrics["dataset"] == dataset]
    present = [i for i in inits if i in set(m["init"])]
    labels = [lab for lab in dict.fromkeys(m["label"]) if lab != MACRO] + [MACRO]
    grid = (m.pivot(index="label", columns="init", values="auroc_boot_mean")
            .reindex(index=labels, columns=present).to_numpy(dtype=float) * 100)
    with plt.style.context(STYLE):
        fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(present), 0.8 + 0.28 * len(labels)))
        finite = grid[np.isfinite(grid)]
        vmin = float(np.floor(finite.min())) if finite.size else 50.0
        vmax = float(np.ceil(finite.max())) if finite.size else 100.0
        vmax = max(vmax, vmin + 1.0)
        cmap = plt.get_cmap().with_extremes(bad="0.85")
        im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax)
        for (r, c), v in np.ndenumerate(grid):
            shade = "white" if np.isfinite(v) and (v - vmin) / (vmax - vmin) < 0.6 else "black"
            ax.text(c, r, "n/a" if not np.isfinite(v) else f"{v:.1f}", ha="center", va="center", fontsize=6,
                    color=shade)
        ax.set_xticks(range(len(present)), present, rotation=30, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.axhline(len(labels) - 1.5, color="white", lw=1.5)  # separates the macro row
        fig.colorbar(im, ax=ax, label="AUROC (%)", shrink=0.8)
        ax.set_title(f"{dataset}: per-label AUROC (bootstrap mean)")
    return fig


def forest_figure(tests: pd.DataFrame, *, inits: list[str], reference: str, datasets: list[str]) -> Figure:
    """Macro ΔAUROC (init − reference, percentage points) with 95% CI, per dataset and initialisation."""
    colours = init_colours(inits)
    others = [i for i in inits if i != reference]
    macro = tests[tests["level"] == "macro"]
    rows = []
    for ds in datasets:
        for init in others:
            o = oriented(macro[macro["dataset"] == ds], init, reference)
            if len(o):
                rows.append((ds, init, o.iloc[0]))
    with plt.style.context(STYLE):
        fig, ax = plt.subplots(figsize=(4.5, 0.9 + 0.32 * max(1, len(rows))))
        ax.axvline(0.0, color="0.5", lw=0.8)
        for y, (ds, init, r) in enumerate(rows):
            d, lo, hi = 100 * r["delta_mean"], 100 * r["delta_ci_low"], 100 * r["delta_ci_high"]
            ax.errorbar([d], [y], xerr=[[d - lo], [hi - d]], fmt="o", ms=4, capsize=2, color=colours[init],
                        label=init if init not in {x[1] for x in rows[:y]} else None)
        ax.set_yticks(range(len(rows)), [f"{ds}" + (f" [{int(r['n_labels'])}]") for ds, _, r in rows])
        ax.invert_yaxis()
        ax.set_xlabel(f"Δ macro AUROC vs {reference} (percentage points, 95% CI)")
        if rows:
            ax.legend(loc="best")
        else:
            ax.text(0.5, 0.5, "no comparison with the reference", transform=ax.transAxes, ha="center")
        ax.set_title("Initialisation vs reference, per dataset [labels compared]")
    return fig


def save_figure(fig: Figure, files: dict[str, Path]) -> None:
    """Save one figure in every format, byte-stable (no dates or software tags), then close it."""
    with plt.style.context(STYLE):
        for ext, path in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, format=ext, metadata=_METADATA[ext])
    plt.close(fig)
