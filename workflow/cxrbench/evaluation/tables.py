"""Publication tables from the per-dataset statistics: numeric CSV plus formatted Markdown and LaTeX.

Each builder returns a ``Table``: ``numeric`` (every number, machine-readable, written as CSV),
``display`` (formatted strings for Markdown/LaTeX) and ``note`` (method line printed under the table:
resampling unit, B, seed source, which p is shown).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.evaluation.comparisons import oriented
from cxrbench.evaluation.metrics import MACRO

_logger = logging.getLogger(__name__)

__all__ = [
    "Table",
    "format_auroc",
    "format_p",
    "main_table",
    "overlap_table",
    "per_label_table",
    "tests_table",
    "write_table",
]


@dataclass(frozen=True)
class Table:
    numeric: pd.DataFrame
    display: pd.DataFrame
    note: str


def format_p(p: float, *, n_resamples: int) -> str:
    """p to three decimals; 0 (a bootstrap p below its resolution) as ``< 1/B``; NaN as an en dash."""
    if p is None or np.isnan(p):
        return "–"
    if p == 0:
        return f"< {1 / n_resamples:.3g}"
    return f"{p:.3f}"


def format_auroc(mean: float, sd: float) -> str:
    """AUROC in percent as ``mean ± SD``."""
    if np.isnan(mean):
        return "–"
    return f"{100 * mean:.2f} ± {100 * sd:.2f}"


def _note(n_resamples: int, unit: str, family: str, extra: str = "") -> str:
    return (
        f"AUROC (%) as mean ± SD over {n_resamples} paired bootstrap resamples of the test set ({unit} level). "
        f"p: two-sided paired bootstrap, Benjamini-Hochberg adjusted (family: {family}). {extra}"
    ).strip()


def main_table(
    metrics: pd.DataFrame, tests: pd.DataFrame, *, inits: list[str], datasets: list[str], reference: str,
    n_resamples: int, unit: str, family: str,
) -> Table:
    """Initialisations x datasets macro AUROC, with p vs the reference initialisation (the study's layout)."""
    macro = metrics[metrics["label"] == MACRO]
    full = metrics[metrics["label"] != MACRO].groupby("dataset")["label"].nunique()
    rows, cells = [], {}
    for ds in datasets:
        cmp = tests[(tests["dataset"] == ds) & (tests["level"] == "macro")]
        for init in inits:
            m = macro[(macro["dataset"] == ds) & (macro["init"] == init)]
            if m.empty:
                continue
            m = m.iloc[0]
            row = {"dataset": ds, "init": init, "n_labels": int(m["n_labels"]), "auroc_mean": m["auroc_boot_mean"],
                   "auroc_sd": m["auroc_boot_sd"], "auroc_ci_low": m["auroc_ci_low"],
                   "auroc_ci_high": m["auroc_ci_high"], "auroc_point": m["auroc"], "reference": reference}
            text = format_auroc(m["auroc_boot_mean"], m["auroc_boot_sd"])
            if int(m["n_labels"]) != int(full.get(ds, 0)):
                text += f" [{int(m['n_labels'])} labels]"
            if init != reference:
                o = oriented(cmp, init, reference)
                if not o.empty:
                    o = o.iloc[0]
                    row.update({k: o[k] for k in ("delta_mean", "delta_ci_low", "delta_ci_high",
                                                  "p_a_gt_b", "p_b_gt_a", "p_two_sided", "p_two_sided_bh")})
                    row["n_labels_compared"] = int(o["n_labels"])
                    text += f" (p {format_p(o['p_two_sided_bh'], n_resamples=n_resamples)})"
            rows.append(row)
            cells[(init, f"{ds} ({int(full.get(ds, 0))})")] = text
    numeric = pd.DataFrame(rows).rename(columns={"p_a_gt_b": "p_init_gt_ref", "p_b_gt_a": "p_ref_gt_init"})
    display = pd.Series(cells, dtype=object).unstack() if cells else pd.DataFrame()
    if cells:
        display = display.reindex(index=[i for i in inits if i in display.index],
                                  columns=[c for c in dict.fromkeys(k[1] for k in cells)]).fillna("n/a")
        display = display.rename_axis(index="initialisation").reset_index()
    note = _note(n_resamples, unit, family, f"Reference: {reference}; column header gives the number of labels; "
                 "[k labels] marks a run on a label subset (p then compares the shared labels).")
    return Table(numeric, display, note)


def overlap_table(
    tests: pd.DataFrame, *, pipeline_inits: list[str], inits: list[str], n_resamples: int, unit: str, family: str,
) -> Table:
    """Each pipeline (supervised pre-trained) initialisation vs every other init on their shared labels."""
    rows = []
    macro = tests[tests["level"] == "macro"]
    for p_init in pipeline_inits:
        for other in [i for i in inits if i not in pipeline_inits]:
            o = oriented(macro, other, p_init)
            for r in o.itertuples():
                rows.append({
                    "dataset": r.dataset, "pipeline_init": p_init, "init": other, "n_labels": r.n_labels,
                    "pipeline_auroc_mean": r.auroc_b_mean, "pipeline_auroc_sd": r.auroc_b_sd,
                    "auroc_mean": r.auroc_a_mean, "auroc_sd": r.auroc_a_sd, "delta_mean": r.delta_mean,
                    "delta_ci_low": r.delta_ci_low, "delta_ci_high": r.delta_ci_high,
                    "p_init_gt_pipeline": r.p_a_gt_b, "p_pipeline_gt_init": r.p_b_gt_a,
                    "p_two_sided": r.p_two_sided, "p_two_sided_bh": r.p_two_sided_bh,
                })
    cols = ["dataset", "pipeline_init", "init", "n_labels", "pipeline_auroc_mean", "pipeline_auroc_sd", "auroc_mean",
            "auroc_sd", "delta_mean", "delta_ci_low", "delta_ci_high", "p_init_gt_pipeline", "p_pipeline_gt_init",
            "p_two_sided", "p_two_sided_bh"]
    numeric = pd.DataFrame(rows, columns=cols)
    display = pd.DataFrame({
        "dataset": numeric["dataset"],
        "#labels": numeric["n_labels"].astype(str),
        "pre-trained init": numeric["pipeline_init"],
        "pre-trained AUROC (%)": [format_auroc(m, s) for m, s in
                                  zip(numeric["pipeline_auroc_mean"], numeric["pipeline_auroc_sd"])],
        "compared init": numeric["init"],
        "compared AUROC (%)": [format_auroc(m, s) for m, s in zip(numeric["auroc_mean"], numeric["auroc_sd"])],
        "p (two-sided, BH)": [format_p(p, n_resamples=n_resamples) for p in numeric["p_two_sided_bh"]],
        "p (study, init > pre-trained)": [format_p(p, n_resamples=n_resamples) for p in numeric["p_init_gt_pipeline"]],
    })
    note = _note(n_resamples, unit, family, "Both runs evaluated on the labels they share (#labels); the study's "
                 "one-sided p = 1 - mean(AUC_init > AUC_pre-trained) is shown as well.")
    return Table(numeric, display, note)


def per_label_table(
    metrics: pd.DataFrame, tests: pd.DataFrame, *, dataset: str, inits: list[str], reference: str,
    n_resamples: int, unit: str, family: str,
) -> Table:
    """Per-label AUROC per initialisation on one dataset, with p vs the reference per label."""
    m = metrics[metrics["dataset"] == dataset]
    present = [i for i in inits if i in set(m["init"])]
    labels = list(dict.fromkeys(lab for i in present for lab in m.loc[m["init"] == i, "label"] if lab != MACRO))
    labels.append(MACRO)
    cmp = tests[tests["dataset"] == dataset]
    numeric_rows, display_rows = [], []
    for lab in labels:
        counts = m[(m["label"] == lab)].iloc[0]
        num: dict[str, object] = {"dataset": dataset, "label": lab, "n_pos": counts["n_pos"], "n_neg": counts["n_neg"]}
        disp: dict[str, object] = {"label": lab, "n+ / n−": "" if lab == MACRO else
                                   f"{int(counts['n_pos'])} / {int(counts['n_neg'])}"}
        for init in present:
            r = m[(m["init"] == init) & (m["label"] == lab)]
            mean, sd = (r.iloc[0]["auroc_boot_mean"], r.iloc[0]["auroc_boot_sd"]) if len(r) else (np.nan, np.nan)
            num[f"{init}_auroc_mean"], num[f"{init}_auroc_sd"] = mean, sd
            disp[init] = format_auroc(mean, sd) if len(r) else "n/a"
        for init in present:
            if init == reference or reference not in present:
                continue
            o = oriented(cmp[cmp["label"] == lab], init, reference)
            p = o.iloc[0]["p_two_sided_bh"] if len(o) else np.nan
            num[f"p_{init}_vs_{reference}_bh"] = p
            num[f"p_{init}_gt_{reference}"] = o.iloc[0]["p_a_gt_b"] if len(o) else np.nan
            disp[f"p {init} vs {reference}"] = format_p(p, n_resamples=n_resamples)
        numeric_rows.append(num)
        display_rows.append(disp)
    note = _note(n_resamples, unit, family, "n+ / n−: positive / negative test images (masked excluded); the macro "
                 "row of a pair averages the labels both runs share.")
    return Table(pd.DataFrame(numeric_rows), pd.DataFrame(display_rows), note)


def tests_table(tests: pd.DataFrame, *, n_resamples: int, unit: str, family: str) -> Table:
    """Every paired test with raw and adjusted p (numeric), and a readable summary (display)."""
    display = pd.DataFrame({
        "dataset": tests["dataset"], "a": tests["init_a"], "b": tests["init_b"], "label": tests["label"],
        "AUROC a (%)": [format_auroc(m, s) for m, s in zip(tests["auroc_a_mean"], tests["auroc_a_sd"])],
        "AUROC b (%)": [format_auroc(m, s) for m, s in zip(tests["auroc_b_mean"], tests["auroc_b_sd"])],
        "Δ (%) [95% CI]": [f"{100 * d:.2f} [{100 * lo:.2f}, {100 * hi:.2f}]" for d, lo, hi in
                           zip(tests["delta_mean"], tests["delta_ci_low"], tests["delta_ci_high"])],
        "p a>b": [format_p(p, n_resamples=n_resamples) for p in tests["p_a_gt_b"]],
        "p b>a": [format_p(p, n_resamples=n_resamples) for p in tests["p_b_gt_a"]],
        "p two-sided": [format_p(p, n_resamples=n_resamples) for p in tests["p_two_sided"]],
        "p two-sided (BH)": [format_p(p, n_resamples=n_resamples) for p in tests["p_two_sided_bh"]],
    })
    note = _note(n_resamples, unit, family, "p a>b is the study's one-sided 1 - mean(AUC_a > AUC_b).")
    return Table(tests.reset_index(drop=True), display, note)


def _latex(display: pd.DataFrame, note: str) -> str:
    # escape=True protects _ and % in names; ± and < need math mode, so they are substituted afterwards.
    tex = display.to_latex(index=False, escape=True, caption=note, position="htbp")
    return tex.replace("±", r"$\pm$").replace("< ", "$<$ ").replace("−", "$-$").replace("Δ", r"$\Delta$")


def write_table(table: Table, files: dict[str, Path]) -> None:
    """Write a table as CSV (numeric), Markdown and LaTeX (display + note)."""
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    table.numeric.to_csv(files["csv"], index=False, float_format="%.10g")
    md = table.display.to_markdown(index=False, disable_numparse=True) if not table.display.empty else "_(no rows)_"
    files["md"].write_text(f"{md}\n\n{table.note}\n", encoding="utf-8")
    files["tex"].write_text(_latex(table.display, table.note) if not table.display.empty else
                            f"% no rows\n% {table.note}\n", encoding="utf-8")
