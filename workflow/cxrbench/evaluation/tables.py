"""Publication tables from the per-dataset statistics: numeric CSV plus formatted Markdown and LaTeX.

Each builder returns a ``Table``: ``numeric`` (every number, machine-readable, written as CSV),
``display`` (formatted strings for Markdown/LaTeX) and ``note`` (method line printed under the table:
resampling unit, B, seed source, which p is shown).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

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

__all__ = [
    "FAMILY_TEXT",
    "Table",
    "family_text",
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


FAMILY_TEXT = {
    "per_pair": "one family per pair of initialisations, over all datasets",
    "per_dataset": "one family per dataset, over all pairs",
    "all": "all pairs on all datasets",
}


def family_text(family: str) -> str:
    """The Benjamini-Hochberg family in words, for table notes and the README."""
    return f"{FAMILY_TEXT[family]}; per-label and macro tests are separate families"


def _note(n_resamples: int, unit: str, family: str, extra: str = "") -> str:
    return (
        f"AUROC (%) as mean ± SD over {n_resamples} paired bootstrap resamples of the test set ({unit} level); "
        "the same bootstrap mean is used in every table and figure. "
        f"p (two-sided, BH): two-sided paired bootstrap p, Benjamini-Hochberg adjusted ({family_text(family)}). "
        f"{extra}"
    ).strip()


def _evaluable(metrics: pd.DataFrame, dataset: str) -> tuple[list[str], list[str]]:
    """(every label of the dataset's runs, the labels with both classes in its test set)."""
    m = metrics[(metrics["dataset"] == dataset) & (metrics["label"] != MACRO)]
    labels = list(dict.fromkeys(m["label"]))
    undefined = set(m.loc[m["auroc"].isna(), "label"])
    return labels, [lab for lab in labels if lab not in undefined]


def _undefined_reason(n_pos: int, n_neg: int) -> str:
    return "AUROC undefined: no positive test image" if n_pos == 0 else (
        "AUROC undefined: no negative test image" if n_neg == 0 else "AUROC undefined")


def main_table(
    metrics: pd.DataFrame, tests: pd.DataFrame, *, inits: list[str], datasets: list[str], reference: str,
    n_resamples: int, unit: str, family: str, pretrain_datasets: dict[str, str],
) -> Table:
    """The study's layout: datasets (rows) x initialisations, macro AUROC, and per non-reference
    initialisation the study's one-sided p (init > reference, raw) beside the two-sided BH-adjusted p."""
    macro = metrics[metrics["label"] == MACRO]
    others = [i for i in inits if i != reference]
    notes = Footnotes()
    rows, display_rows = [], []
    for ds in datasets:
        labels, evaluable = _evaluable(metrics, ds)
        cmp = tests[(tests["dataset"] == ds) & (tests["level"] == "macro")]
        count = str(len(labels))
        if len(evaluable) < len(labels):
            missing = [display_name(lab) for lab in labels if lab not in evaluable]
            notes.mark(UNDEFINED, "k of n: only k labels have both classes in the test set; the others (no "
                       "positive, or no negative, test image) are left out of every macro mean")
            count = f"{len(evaluable)} of {len(labels)} " + notes.mark(UNDEFINED, f"{ds}: {', '.join(missing)}")
        disp: dict[str, str] = {"dataset": ds, "labels": count}
        for init in inits:
            m = macro[(macro["dataset"] == ds) & (macro["init"] == init)]
            if m.empty:
                disp[f"{init} AUROC (%)"] = "n/a " + notes.mark(NO_RUN, no_run_reason(init, ds, pretrain_datasets))
                continue
            m = m.iloc[0]
            row = {"dataset": ds, "init": init, "n_labels": int(m["n_labels"]), "n_labels_evaluable": len(evaluable),
                   "auroc_mean": m["auroc_boot_mean"], "auroc_sd": m["auroc_boot_sd"],
                   "auroc_ci_low": m["auroc_ci_low"], "auroc_ci_high": m["auroc_ci_high"],
                   "auroc_point": m["auroc"], "reference": reference}
            text = format_auroc(m["auroc_boot_mean"], m["auroc_boot_sd"])
            if int(m["n_labels"]) != len(evaluable):
                text += f" [{int(m['n_labels'])} of {len(evaluable)}] " + notes.mark(
                    NOT_IN_SET, "[k of n]: the run predicts a label subset (labels shared with its pre-training "
                    "set); its macro mean and p use those k labels")
            disp[f"{init} AUROC (%)"] = text
            if init != reference:
                o = oriented(cmp, init, reference)
                if not o.empty:
                    o = o.iloc[0]
                    row.update({k: o[k] for k in ("delta_mean", "delta_ci_low", "delta_ci_high",
                                                  "p_a_gt_b", "p_b_gt_a", "p_two_sided", "p_two_sided_bh")})
                    row["n_labels_compared"] = int(o["n_labels"])
            rows.append(row)
        for init in others:
            r = next((x for x in rows if x["dataset"] == ds and x["init"] == init and "p_a_gt_b" in x), None)
            if r is None:
                missing = [i for i in (init, reference) if macro[(macro["dataset"] == ds) & (macro["init"] == i)].empty]
                gap = "n/a " + (notes.mark(NO_RUN, no_run_reason(missing[0], ds, pretrain_datasets)) if missing
                                else notes.mark(UNDEFINED, "no shared evaluable label"))
                disp[f"p {init} > {reference} (one-sided)"] = gap
                disp[f"p {init} vs {reference} (two-sided, BH)"] = gap
                continue
            disp[f"p {init} > {reference} (one-sided)"] = format_p(r["p_a_gt_b"], n_resamples=n_resamples)
            disp[f"p {init} vs {reference} (two-sided, BH)"] = format_p(r["p_two_sided_bh"],
                                                                         n_resamples=n_resamples)
        display_rows.append(disp)
    numeric = pd.DataFrame(rows).rename(columns={"p_a_gt_b": "p_init_gt_ref", "p_b_gt_a": "p_ref_gt_init"})
    display = pd.DataFrame(display_rows)
    note = _note(n_resamples, unit, family,
                 f"p init > {reference} (one-sided): the study's test, 1 - mean(AUC_init > AUC_{reference}) "
                 f"over the resamples, not adjusted. Reference: {reference}. labels: size of the dataset's "
                 f"label set. {notes.text()}")
    return Table(numeric, display, note)


def overlap_table(
    tests: pd.DataFrame, *, pipeline_inits: list[str], inits: list[str], datasets: list[str], n_resamples: int,
    unit: str, family: str, pretrain_datasets: dict[str, str],
) -> Table:
    """Each pipeline (supervised pre-trained) initialisation vs every other init on their shared labels."""
    rows = []
    macro = tests[tests["level"] == "macro"]
    notes = Footnotes()
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
        for ds in datasets:
            if ds not in set(macro.loc[(macro["init_a"] == p_init) | (macro["init_b"] == p_init), "dataset"]):
                notes.mark(NO_RUN, f"{ds} has no row for {p_init}: " + no_run_reason(p_init, ds, pretrain_datasets))
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
        "p init > pre-trained (one-sided)": [format_p(p, n_resamples=n_resamples)
                                             for p in numeric["p_init_gt_pipeline"]],
        "p (two-sided, BH)": [format_p(p, n_resamples=n_resamples) for p in numeric["p_two_sided_bh"]],
    })
    note = _note(n_resamples, unit, family, "Both runs evaluated on the labels they share (#labels); the study's "
                 "one-sided p = 1 - mean(AUC_init > AUC_pre-trained) is shown as well, not adjusted. "
                 + notes.text())
    return Table(numeric, display, note)


def per_label_table(
    metrics: pd.DataFrame, tests: pd.DataFrame, *, dataset: str, inits: list[str], reference: str,
    n_resamples: int, unit: str, family: str, min_positives: int, pretrain_datasets: dict[str, str],
) -> Table:
    """Per-label AUROC per initialisation on one dataset, with p vs the reference per label.

    A label with fewer than ``min_positives`` test positives (or negatives) keeps its numbers but is
    marked, so that e.g. "100.00 ± 0.00" from three positives is not read as certain.
    """
    m = metrics[metrics["dataset"] == dataset]
    present = [i for i in inits if i in set(m["init"])]
    notes = Footnotes()
    for init in inits:
        if init not in present:
            notes.mark(NO_RUN, no_run_reason(init, dataset, pretrain_datasets))
    labels = list(dict.fromkeys(lab for i in present for lab in m.loc[m["init"] == i, "label"] if lab != MACRO))
    labels.append(MACRO)
    cmp = tests[tests["dataset"] == dataset]
    numeric_rows, display_rows = [], []
    for lab in labels:
        counts = m[(m["label"] == lab)].iloc[0]
        # the macro row has no counts of its own (NaN): it is never flagged, its labels are
        n_pos, n_neg = (0, 0) if lab == MACRO else (int(counts["n_pos"]), int(counts["n_neg"]))
        few = lab != MACRO and few_positives(n_pos, n_neg, min_positives=min_positives)
        num: dict[str, object] = {"dataset": dataset, "label": lab, "display_name": display_name(lab),
                                  "n_pos": counts["n_pos"], "n_neg": counts["n_neg"], "few_positives": few}
        disp: dict[str, object] = {"label": display_name(lab),
                                   "n+ / n−": "" if lab == MACRO else f"{n_pos} / {n_neg}"}
        for init in present:
            r = m[(m["init"] == init) & (m["label"] == lab)]
            mean, sd = (r.iloc[0]["auroc_boot_mean"], r.iloc[0]["auroc_boot_sd"]) if len(r) else (np.nan, np.nan)
            num[f"{init}_auroc_mean"], num[f"{init}_auroc_sd"] = mean, sd
            if not len(r):
                disp[init] = "n/a " + notes.mark(NOT_IN_SET, f"not in {init}'s label set (labels shared with its "
                                                 "pre-training set)")
            elif np.isnan(mean):
                disp[init] = "– " + notes.mark(UNDEFINED, _undefined_reason(n_pos, n_neg))
            else:
                disp[init] = format_auroc(mean, sd) + (" " + notes.mark(
                    FEW, f"fewer than {min_positives} test positives (or negatives): unstable estimate, its SD "
                    "understates the uncertainty") if few else "")
        for init in present:
            if init == reference or reference not in present:
                continue
            o = oriented(cmp[cmp["label"] == lab], init, reference)
            p = o.iloc[0]["p_two_sided_bh"] if len(o) else np.nan
            num[f"p_{init}_vs_{reference}_bh"] = p
            num[f"p_{init}_gt_{reference}"] = o.iloc[0]["p_a_gt_b"] if len(o) else np.nan
            disp[f"p {init} vs {reference} (BH)"] = format_p(p, n_resamples=n_resamples) + (
                " (d)" if few and np.isfinite(p) else "")  # a p from a few positives is as unstable as its AUROC
        numeric_rows.append(num)
        display_rows.append(disp)
    note = _note(n_resamples, unit, family, "n+ / n−: positive / negative test images (masked excluded); the macro "
                 "row of a pair averages the labels both runs share; – in a p column: no test (label undefined or "
                 "not shared). " + notes.text())
    return Table(pd.DataFrame(numeric_rows), pd.DataFrame(display_rows), note)


def tests_table(tests: pd.DataFrame, metrics: pd.DataFrame, *, n_resamples: int, unit: str, family: str,
                min_positives: int) -> Table:
    """Every paired test with raw and adjusted p (numeric), and a readable summary (display); a label
    test resting on fewer than ``min_positives`` test positives (or negatives) is marked."""
    counts = (metrics[metrics["label"] != MACRO].drop_duplicates(["dataset", "label"])
              .set_index(["dataset", "label"])[["n_pos", "n_neg"]])
    numeric = tests.reset_index(drop=True)
    keys = list(zip(numeric["dataset"], numeric["label"]))
    numeric["few_positives"] = [k in counts.index and few_positives(*counts.loc[k], min_positives=min_positives)
                                for k in keys]
    notes = Footnotes()
    mark = notes.mark(FEW, f"fewer than {min_positives} test positives (or negatives): unstable estimate and p") \
        if numeric["few_positives"].any() else ""
    display = pd.DataFrame({
        "dataset": numeric["dataset"], "a": numeric["init_a"], "b": numeric["init_b"],
        "label": [display_name(lab) + (f" {mark}" if few else "") for lab, few in
                  zip(numeric["label"], numeric["few_positives"])],
        "n+ / n−": [f"{int(counts.loc[k, 'n_pos'])} / {int(counts.loc[k, 'n_neg'])}" if k in counts.index else ""
                    for k in keys],
        "AUROC a (%)": [format_auroc(m, s) for m, s in zip(numeric["auroc_a_mean"], numeric["auroc_a_sd"])],
        "AUROC b (%)": [format_auroc(m, s) for m, s in zip(numeric["auroc_b_mean"], numeric["auroc_b_sd"])],
        "Δ (%) [95% CI]": [f"{100 * d:.2f} [{100 * lo:.2f}, {100 * hi:.2f}]" for d, lo, hi in
                           zip(numeric["delta_mean"], numeric["delta_ci_low"], numeric["delta_ci_high"])],
        "p a>b": [format_p(p, n_resamples=n_resamples) for p in numeric["p_a_gt_b"]],
        "p b>a": [format_p(p, n_resamples=n_resamples) for p in numeric["p_b_gt_a"]],
        "p two-sided": [format_p(p, n_resamples=n_resamples) for p in numeric["p_two_sided"]],
        "p two-sided (BH)": [format_p(p, n_resamples=n_resamples) for p in numeric["p_two_sided_bh"]],
    })
    note = _note(n_resamples, unit, family, "p a>b is the study's one-sided 1 - mean(AUC_a > AUC_b). "
                 + notes.text())
    return Table(numeric, display, note)


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


def _latex(display: pd.DataFrame, note: str) -> str:
    # escape=True protects _ and % in cells; pandas leaves the caption raw, so it is escaped here (a bare
    # % would comment out the rest of the caption). ±, <, > and the like need math mode: substituted last.
    caption = re.sub(r"[\\&%$#_{}~^]", lambda m: _TEX_SPECIAL[m.group()], note)
    tex = display.to_latex(index=False, escape=True, caption=caption, position="htbp")
    for text, math in (("±", r"$\pm$"), ("< ", "$<$ "), (" > ", " $>$ "), ("−", "$-$"), ("Δ", r"$\Delta$")):
        tex = tex.replace(text, math)
    return tex


def write_table(table: Table, files: dict[str, Path]) -> None:
    """Write a table as CSV (numeric), Markdown and LaTeX (display + note)."""
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    table.numeric.to_csv(files["csv"], index=False, float_format="%.10g")
    md = table.display.to_markdown(index=False, disable_numparse=True) if not table.display.empty else "_(no rows)_"
    files["md"].write_text(f"{md}\n\n{table.note}\n", encoding="utf-8")
    files["tex"].write_text(_latex(table.display, table.note) if not table.display.empty else
                            f"% no rows\n% {table.note}\n", encoding="utf-8")
