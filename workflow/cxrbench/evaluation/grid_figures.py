"""Figures of the experiment grid: macro AUROC along each axis, seed spread, and the headline ΔAUROC.

Every figure reads ``grid.csv`` / ``grid_deltas.csv`` frames (``cxrbench.evaluation.grid``), uses the shared
style and the initialisations' colours of ``figures``, and is drawn even when its axis has a single value (it
then says so), because the rule declares every file. Points are seed-pooled bootstrap means with 95% percentile
CIs unless a figure says otherwise.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot, as in figures: headless and deterministic

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from cxrbench.evaluation.figures import STYLE, init_colours
from cxrbench.evaluation.grid import POOLED
from cxrbench.evaluation.metrics import MACRO
from cxrbench.evaluation.outputs import GRID_FIGURES  # the stems the `grid` rule declares
from cxrbench.runkey import CellKey

_logger = logging.getLogger(__name__)

__all__ = ["GRID_FIGURES", "axis_text", "grid_figures", "headline_figure", "seed_spread_figure"]

# Figure stems, in the order they are drawn (each written as PDF and PNG).

_REGIME_NAMES = {"finetune": "fine-tune", "linear_probe": "linear probe", "lora": "LoRA"}
_AXIS_NAMES = {"size": "image size", "label_fraction": "label fraction", "regime": "training regime"}
_DATASET_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def axis_text(axis: str, value: Any) -> str:
    """One axis value as a reader sees it: ``512 px``, ``10 % labels``, ``linear probe``, ``seed 2``."""
    if axis == "size":
        return f"{int(value)} px"
    if axis == "label_fraction":
        return f"{100 * float(value):g} % labels"
    if axis == "regime":
        return _REGIME_NAMES.get(str(value), str(value))
    return f"seed {value}"


def _values(cells: Sequence[CellKey]) -> dict[str, list[Any]]:
    """Each axis's values in order of first appearance (the config order the rule passes cells in)."""
    out: dict[str, list[Any]] = {a: [] for a in ("dataset", "size", "regime", "label_fraction", "seed")}
    for key in cells:
        for axis, value in key.axes().items():
            if value not in out[axis]:
                out[axis].append(value)
    return out


def _reference(values: dict[str, list[Any]]) -> dict[str, Any]:
    """The setting the headline holds the other axes at: first size and regime, largest label fraction."""
    return {"size": values["size"][0], "regime": values["regime"][0], "label_fraction": max(values["label_fraction"])}


def _single_value_figure(title: str, axis: str, value: Any) -> Figure:
    with plt.style.context(STYLE):
        fig, ax = plt.subplots(figsize=(4.2, 1.6))
        ax.set_axis_off()
        ax.text(0.5, 0.5, f"single value on this axis: {axis_text(axis, value)}\n(nothing to compare along "
                f"{_AXIS_NAMES.get(axis, axis)})", ha="center", va="center", transform=ax.transAxes, color="0.3")
        fig.suptitle(title)
    return fig


def _pooled_macro(grid: pd.DataFrame) -> pd.DataFrame:
    return grid[(grid["label"] == MACRO) & (grid["seed"].astype(str) == POOLED)]


def _legend(fig: Figure, inits: Sequence[str], colours: dict[str, str], extra: Sequence[Line2D] = ()) -> None:
    handles = [Line2D([], [], color=colours[i], marker="o", ms=4, label=i) for i in inits] + list(extra)
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5), title="initialisation"
               if not extra else None)


def _axis_figure(grid: pd.DataFrame, *, axis: str, values: dict[str, list[Any]], inits: Sequence[str],
                 title: str) -> Figure:
    """Pooled macro AUROC along ``axis`` (x), one line per init, a column per dataset and a row per setting of
    the other axes that vary."""
    others = [a for a in ("size", "regime", "label_fraction") if a != axis]
    varying = [a for a in others if len(values[a]) > 1]
    fixed = [axis_text(a, values[a][0]) for a in others if len(values[a]) == 1]
    combos = list(itertools.product(*(values[a] for a in varying))) or [()]
    datasets = values["dataset"]
    colours = init_colours(list(inits))
    m = _pooled_macro(grid)
    xs = sorted(values[axis]) if axis != "regime" else values[axis]
    categorical = axis == "regime"
    position = {v: (i if categorical else float(v)) for i, v in enumerate(xs)}
    span = 1.0 if categorical else max(math.log10(max(xs) / min(xs)), 0.1)
    with plt.style.context(STYLE):
        fig, axes = plt.subplots(len(combos), len(datasets), squeeze=False, sharex=True,
                                 figsize=(0.6 + 2.0 * len(datasets), 0.9 + 1.75 * len(combos)))
        for (r, combo), (c, ds) in itertools.product(enumerate(combos), enumerate(datasets)):
            ax: Axes = axes[r, c]
            sel = m[m["dataset"] == ds]
            for a, v in zip(varying, combo):
                sel = sel[sel[a] == v]
            for k, init in enumerate(inits):
                pts = sel[sel["init"] == init].copy()
                if pts.empty:
                    continue
                pts["x"] = pts[axis].map(position)
                pts = pts.sort_values("x")
                offset = (k - (len(inits) - 1) / 2) * (0.12 if categorical else 0.08 * span)  # inits' CIs apart
                x = pts["x"] + offset if categorical else pts["x"] * 10 ** offset
                y, lo, hi = (100 * pts[col].to_numpy(dtype=float) for col in ("auroc", "ci_low", "ci_high"))
                ax.errorbar(x, y, yerr=[y - lo, hi - y], color=colours[init], marker="o", ms=3.5, capsize=2,
                            lw=0 if categorical else 1.2, elinewidth=0.9)
            if not categorical:
                ax.set_xscale("log")
                ax.set_xlim(min(xs) / 10 ** (0.15 * span), max(xs) * 10 ** (0.15 * span))
                ax.xaxis.set_minor_locator(plt.NullLocator())
            else:
                ax.set_xlim(-0.5, len(xs) - 0.5)
            ax.set_xticks([position[v] for v in xs], [axis_text(axis, v).removesuffix(" labels") for v in xs])
            if r == 0:
                ax.set_title(ds)
            if c == 0:
                row = ", ".join(axis_text(a, v) for a, v in zip(varying, combo))
                ax.set_ylabel((row + "\n" if row else "") + "macro AUROC (%)")
            if r == len(combos) - 1:
                ax.set_xlabel({"size": "image size (px, log scale)", "label_fraction":
                               "label fraction (%, log scale)", "regime": "training regime"}[axis])
        suffix = f" ({', '.join(fixed)})" if fixed else ""
        fig.suptitle(f"{title}{suffix}\nseed-pooled bootstrap mean, 95% CI")
        _legend(fig, inits, colours)
    return fig


def seed_spread_figure(grid: pd.DataFrame, *, values: dict[str, list[Any]], inits: Sequence[str]) -> Figure:
    """Per-seed macro AUROC (open circles) beside the seed-pooled mean and CI (filled), per setting and init."""
    title = "Seed spread of macro AUROC"
    if len(values["seed"]) == 1:
        return _single_value_figure(title, "seed", values["seed"][0])
    colours = init_colours(list(inits))
    macro = grid[grid["label"] == MACRO]
    settings = list(itertools.product(values["size"], values["regime"], values["label_fraction"]))
    datasets = values["dataset"]
    ncols = min(3, len(datasets))
    nrows = math.ceil(len(datasets) / ncols)
    band = len(inits) + 1  # rows per setting: one per init and a gap
    with plt.style.context(STYLE):
        fig, axes = plt.subplots(nrows, ncols, squeeze=False, sharey=True,
                                 figsize=(1.6 + 2.3 * ncols, 1.0 + nrows * (0.4 + 0.13 * band * len(settings))))
        for ax in axes.flat[len(datasets):]:
            ax.set_visible(False)
        for ax, ds in zip(axes.flat, datasets):
            for s, (size, regime, fraction) in enumerate(settings):
                sel = macro[(macro["dataset"] == ds) & (macro["size"] == size) & (macro["regime"] == regime)
                            & (macro["label_fraction"] == fraction)]
                for k, init in enumerate(inits):
                    y = s * band + k
                    rows = sel[sel["init"] == init]
                    seeds = rows[rows["seed"].astype(str) != POOLED]
                    pooled = rows[rows["seed"].astype(str) == POOLED]
                    ax.plot(100 * seeds["auroc"], np.full(len(seeds), y), ls="none", marker="o", ms=3.5,
                            mfc="none", mec=colours[init], mew=0.9)
                    for p in pooled.itertuples():
                        ax.errorbar([100 * p.auroc], [y + 0.35], xerr=[[100 * (p.auroc - p.ci_low)],
                                    [100 * (p.ci_high - p.auroc)]], color=colours[init], marker="D", ms=3,
                                    capsize=1.5, elinewidth=0.9)
            ax.set_yticks([s * band + (len(inits) - 1) / 2 for s in range(len(settings))],
                          [", ".join(axis_text(a, v) for a, v in zip(("size", "regime", "label_fraction"), st))
                           for st in settings])
            ax.set_ylim(len(settings) * band - 0.5, -0.7)
            ax.set_title(ds)
            ax.set_xlabel("macro AUROC (%)")
        markers = [Line2D([], [], ls="none", marker="o", mfc="none", mec="0.3", label="one seed (bootstrap mean)"),
                   Line2D([], [], color="0.3", marker="D", ms=3, label="seed-pooled mean, 95% CI")]
        fig.suptitle(f"{title}: {len(values['seed'])} seeds per setting")
        _legend(fig, inits, colours, markers)
    return fig


def headline_figure(deltas: pd.DataFrame, *, values: dict[str, list[Any]], contrast: tuple[str, str] | None,
                    colour: str, alpha: float) -> Figure:
    """Seed-pooled macro ΔAUROC of ``contrast`` (a − b) with 95% CI along each axis, the other axes held at the
    reference setting (first size and regime, largest label fraction); filled markers: BH-adjusted p ≤ alpha."""
    if contrast is None:
        with plt.style.context(STYLE):
            fig, ax = plt.subplots(figsize=(4.2, 1.6))
            ax.set_axis_off()
            ax.text(0.5, 0.5, "no contrast: fewer than two initialisations", ha="center", va="center",
                    transform=ax.transAxes, color="0.3")
            fig.suptitle("Headline ΔAUROC")
        return fig
    a, b = contrast
    ref = _reference(values)
    d = deltas[(deltas["init_a"] == a) & (deltas["init_b"] == b) & (deltas["label"] == MACRO)
               & (deltas["seed"].astype(str) == POOLED)]
    datasets = values["dataset"]
    axes_order = ("size", "label_fraction", "regime")
    with plt.style.context(STYLE):
        fig, axes = plt.subplots(1, 3, sharey=True, figsize=(7.2, 2.9))
        for ax, axis in zip(axes, axes_order):
            xs = sorted(values[axis]) if axis != "regime" else values[axis]
            held = ", ".join(axis_text(o, ref[o]) for o in axes_order if o != axis)
            ax.set_title(f"along {_AXIS_NAMES[axis]}\n(at {held})", fontsize=7)
            ax.axhline(0.0, color="0.6", lw=0.8)
            sel = d
            for o in axes_order:
                if o != axis:
                    sel = sel[sel[o] == ref[o]]
            for j, ds in enumerate(datasets):
                offset = (j - (len(datasets) - 1) / 2) * min(0.12, 0.6 / len(datasets))
                for i, v in enumerate(xs):
                    r = sel[(sel["dataset"] == ds) & (sel[axis] == v)]
                    if r.empty:
                        continue
                    r = r.iloc[0]
                    y, lo, hi = 100 * r["delta"], 100 * r["ci_low"], 100 * r["ci_high"]
                    ax.errorbar([i + offset], [y], yerr=[[y - lo], [hi - y]], color=colour,
                                marker=_DATASET_MARKERS[j % len(_DATASET_MARKERS)], ms=4, capsize=2, elinewidth=0.9,
                                mfc=colour if bool(r["significant"]) else "white")
            ax.set_xlim(-0.5, len(xs) - 0.5)
            ax.set_xticks(range(len(xs)), [axis_text(axis, v).removesuffix(" labels") for v in xs])
            # a single value still shows the one Δ there is, so a default (one-cell) grid has a headline too
            ax.set_xlabel(_AXIS_NAMES[axis] + ("\n(single value on this axis)" if len(xs) == 1 else ""))
        axes[0].set_ylabel(f"Δ macro AUROC, {a} − {b}\n(percentage points, 95% CI)")
        handles = [Line2D([], [], ls="none", color=colour, marker=_DATASET_MARKERS[j % len(_DATASET_MARKERS)],
                          ms=4, label=ds) for j, ds in enumerate(datasets)]
        handles.append(Line2D([], [], ls="none", color=colour, marker="o", mfc="white", ms=4,
                              label=f"open marker: BH-adjusted p > {alpha:g}"))
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4))
        fig.suptitle(f"Headline: {a} − {b}, seed-pooled")
    return fig


def grid_figures(grid: pd.DataFrame, deltas: pd.DataFrame, *, cells: Sequence[CellKey], inits: Sequence[str],
                 contrasts: Sequence[tuple[str, str]], alpha: float) -> dict[str, Figure]:
    """Every figure of ``GRID_FIGURES``, keyed by stem."""
    values = _values(cells)
    colours = init_colours(list(inits))
    out: dict[str, Figure] = {}
    for name, axis, title in (("grid_size", "size", "Macro AUROC vs image size"),
                              ("grid_label_efficiency", "label_fraction", "Label efficiency: macro AUROC vs label fraction"),
                              ("grid_regimes", "regime", "Macro AUROC per training regime")):
        out[name] = (_single_value_figure(title, axis, values[axis][0]) if len(values[axis]) == 1
                     else _axis_figure(grid, axis=axis, values=values, inits=inits, title=title))
    out["grid_seed_spread"] = seed_spread_figure(grid, values=values, inits=inits)
    first = tuple(contrasts[0]) if contrasts else None
    out["grid_headline"] = headline_figure(deltas, values=values, contrast=first,
                                           colour=colours[first[0]] if first else "0.3", alpha=alpha)
    return out
