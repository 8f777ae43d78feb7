"""The demo's known answer: what a correct pipeline must find on the synthetic datasets, measured on a finished run.

The phantoms draw each finding the same way at all six sites (:mod:`cxrbench.demo.phantom`), so:

* **learnable findings** -- those drawn as a large change of the chest (enlarged heart, basal fluid, airspace
  opacity, perihilar haze) -- are predictable from the image: a trained initialisation reaches a high test
  AUROC on them;
* the **MIMIC-supervised chain** starts from a backbone that has already learned these drawings on the demo
  MIMIC-CXR, so it beats random initialisation;
* **negative controls** (:attr:`cxrbench.demo.common.LabelSpec.control`) are never drawn and are positive
  independently of everything else, so their true AUROC is 0.5.

:func:`summarise` measures these on a results folder; ``tests/test_known_answer.py`` asserts them, and
``python -m cxrbench.demo.known_answer RESULTS --write-docs docs/demo-data.md`` writes the measured table into
the docs (between the ``known-answer`` markers), so the docs quote a fresh run instead of copied numbers.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from cxrbench.paths import Layout
from cxrbench.runkey import CellKey

__all__ = ["CONTROL", "LEARNABLE", "check", "render_markdown", "summarise", "write_docs"]

# Canonical labels (resources/canonical_findings.csv) whose demo drawing is a large change of the chest.
# Small or thin drawings (nodule, pneumothorax line, atelectasis plate, rib fracture, pleural cap, hernia
# bubble, aortic knob, reticulation) and no_finding (which depends on every finding, controls included) are
# left out: at 32 px they are not reliably learnable in the demo's budget.
LEARNABLE: frozenset[str] = frozenset({
    "cardiomegaly",
    "pleural_effusion", "pleural_effusion_right", "pleural_effusion_left",
    "consolidation", "pneumonia", "lung_opacity", "infiltration",
    "pneumonic_infiltrates_right", "pneumonic_infiltrates_left",
    "edema", "congestion",
})
# Canonical labels of the native negative-control labels (CheXpert/MIMIC Fracture, PadChest scoliosis, kyphosis).
CONTROL: frozenset[str] = frozenset({"fracture", "scoliosis", "kyphosis"})

# The known answer (docs/demo-data.md). A label permutation, a flipped score or a broken transfer breaks one of these.
# Calibrated on the shipped config (CPU, deterministic; values of 2026-12-01 in the comments) with margins for
# floating-point differences between machines.
MIN_ANY_MACRO = 0.60  # every run's learnable macro AUROC, random init after 2 epochs included; measured 0.67-0.90
MIN_TRAINED_MACRO = 0.80  # the pretrained chain's, on every dataset it fine-tunes on; measured 0.84-0.90
MIN_TRAINED_MEAN = 0.85  # the chain's, averaged over those datasets; measured 0.87
MAX_P = 0.05  # significance level of the chain-vs-random tests
MIN_SIGNIFICANT = 3  # datasets (of 5) where the chain beats random at MAX_P; measured 3 (p < 0.005), the others 0.06-0.11
# The pre-trained head's head start: after the first epoch the chain's validation macro AUROC exceeds random's on
# this many datasets (measured 5 of 5). With the head's outputs permuted it falls (3 of 5 with 5 fine-tuning
# epochs), so this catches a permuted head even where fine-tuning repairs the test metrics.
MIN_HEAD_START = 4
CONTROL_BAND = (0.20, 0.80)  # each control AUROC: 10-20 test positives give a sampling SD of about 0.08
CONTROL_MEAN_BAND = (0.40, 0.60)  # their mean

BEGIN, END = "<!-- known-answer:begin -->", "<!-- known-answer:end -->"


def _auroc(df: pd.DataFrame) -> float:
    """Test AUROC of one label's rows (NaN targets left out); NaN when one class is missing."""
    df = df.dropna(subset=["target"])
    if df["target"].nunique() < 2:
        return float("nan")
    return float(roc_auc_score(df["target"].astype(int), df["score"]))


def summarise(results: Path, *, reference: str = "random", pretrained: str = "mimic_sl") -> dict[str, Any]:
    """Per dataset and initialisation: macro test AUROC over the learnable findings, each control's test
    AUROC, and the pipeline's paired-bootstrap p that ``pretrained`` beats ``reference`` (macro, all labels).
    """
    results = Path(results)
    out: dict[str, Any] = {"reference": reference, "pretrained": pretrained, "datasets": {}}
    layout = Layout(results)
    # One comparison cell per dataset: the shipped demo has no grid (with one, the first cell found is used).
    for stats in sorted(layout.stats_root().glob("*/*/*/*/*/tests.parquet")):
        cell = CellKey.from_relpath(stats.parent.relative_to(layout.stats_root()).as_posix())
        ds = cell.dataset
        if ds in out["datasets"]:
            continue
        row: dict[str, Any] = {"learnable_macro": {}, "learnable_labels": {}, "control": {}}
        row["p_pretrained_gt_ref"] = None
        inits = sorted(p.name for p in layout.runs_root().iterdir()) if layout.runs_root().is_dir() else []
        for init in inits:
            run = layout.run_dir(cell.with_init(init)) / "predictions.parquet"
            if not run.is_file():
                continue
            pred = pd.read_parquet(run, columns=["split", "label", "target", "score"])
            test = pred[pred["split"] == "test"]
            per_label = {str(lab): _auroc(g) for lab, g in test.groupby("label", observed=True)}
            learn = {k: v for k, v in per_label.items() if k in LEARNABLE and not np.isnan(v)}
            row["learnable_labels"][init] = sorted(learn)
            row["learnable_macro"][init] = float(np.mean(list(learn.values()))) if learn else float("nan")
            for k, v in per_label.items():
                if k in CONTROL and not np.isnan(v):
                    row["control"].setdefault(k, {})[init] = v
            history = run.parent / "history.csv"
            if history.is_file():  # first-epoch validation macro AUROC, each run on its own labels
                row.setdefault("first_epoch_val", {})[init] = float(pd.read_csv(history)["val_auroc_macro"].iloc[0])
        tests = pd.read_parquet(stats)
        macro = tests[(tests["level"] == "macro") & tests["init_a"].isin([reference, pretrained])
                      & tests["init_b"].isin([reference, pretrained])]
        if len(macro):
            t = macro.iloc[0]
            forward, backward = ("p_a_gt_b", "p_b_gt_a") if t["init_a"] == pretrained else ("p_b_gt_a", "p_a_gt_b")
            row["p_pretrained_gt_ref"] = float(t[forward])
            row["p_ref_gt_pretrained"] = float(t[backward])
            row["n_bootstrap_valid"] = int(t["n_paired"])
        out["datasets"][ds] = row
    controls = [v for r in out["datasets"].values() for by_init in r["control"].values() for v in by_init.values()]
    out["control_mean"] = float(np.mean(controls)) if controls else float("nan")
    return out


def check(summary: dict[str, Any]) -> list[str]:
    """Every way ``summary`` misses the known answer (empty when it holds)."""
    pre = summary["pretrained"]
    problems = []
    n_p, n_targets, n_head = 0, 0, 0
    for ds, r in summary["datasets"].items():
        for init, v in r["learnable_macro"].items():
            if not v >= MIN_ANY_MACRO:
                problems.append(f"{ds}/{init}: learnable macro AUROC {v:.3f} < {MIN_ANY_MACRO}")
        if pre in r["learnable_macro"]:
            n_targets += 1
            v = r["learnable_macro"][pre]
            if not v >= MIN_TRAINED_MACRO:
                problems.append(f"{ds}/{pre}: learnable macro AUROC {v:.3f} < {MIN_TRAINED_MACRO}")
            n_p += r["p_pretrained_gt_ref"] is not None and r["p_pretrained_gt_ref"] < MAX_P
            first = r.get("first_epoch_val", {})
            n_head += pre in first and summary["reference"] in first and first[pre] > first[summary["reference"]]
            p_worse = r.get("p_ref_gt_pretrained", 1.0)
            if p_worse < MAX_P:
                problems.append(f"{ds}: {pre} is worse than {summary['reference']} (p = {p_worse:.3f})")
        for lab, by_init in r["control"].items():
            for init, v in by_init.items():
                if not CONTROL_BAND[0] <= v <= CONTROL_BAND[1]:
                    problems.append(f"{ds}/{init}: negative control {lab} AUROC {v:.3f} outside {CONTROL_BAND}")
    trained = [r["learnable_macro"][pre] for r in summary["datasets"].values() if pre in r["learnable_macro"]]
    if trained and not np.mean(trained) >= MIN_TRAINED_MEAN:
        problems.append(f"{pre}: mean learnable macro AUROC {np.mean(trained):.3f} < {MIN_TRAINED_MEAN}")
    if n_targets == 0:
        problems.append(f"no dataset fine-tuned from {pre!r}")
    elif n_p < min(MIN_SIGNIFICANT, n_targets):
        problems.append(f"{pre} beats {summary['reference']} with p < {MAX_P} on {n_p} of {n_targets} datasets")
    if n_targets and n_head < min(MIN_HEAD_START, n_targets):
        problems.append(f"{pre} starts ahead of {summary['reference']} (first-epoch validation AUROC) on only "
                        f"{n_head} of {n_targets} datasets: the pre-trained head does not carry the answer")
    if not CONTROL_MEAN_BAND[0] <= summary["control_mean"] <= CONTROL_MEAN_BAND[1]:
        problems.append(f"mean negative-control AUROC {summary['control_mean']:.3f} outside {CONTROL_MEAN_BAND}")
    return problems


def render_markdown(summary: dict[str, Any]) -> str:
    """The summary as Markdown tables (AUROCs to three decimals, p as the bootstrap prints it)."""
    ref, pre = summary["reference"], summary["pretrained"]
    inits = sorted({i for r in summary["datasets"].values() for i in r["learnable_macro"]}, key=lambda i: i != ref)
    head = f"| dataset | learnable findings ({ref}) | {' | '.join(inits)} | p({pre} > {ref}), macro of shared labels |"
    lines = [head + f" first-epoch val AUROC ({' / '.join(inits)}) |",
             "|---|---|" + "---|" * len(inits) + "---|---|"]
    for ds, r in summary["datasets"].items():
        cells = [f"{r['learnable_macro'][i]:.3f}" if i in r["learnable_macro"] else "–" for i in inits]
        p = r["p_pretrained_gt_ref"]
        p_txt = "–" if p is None else ("< 0.005" if p == 0 else f"{p:.3f}")
        learn = ", ".join(r["learnable_labels"].get(ref, []))
        first = r.get("first_epoch_val", {})
        first_txt = " / ".join(f"{first[i]:.3f}" if i in first else "–" for i in inits)
        lines.append(f"| {ds} | {learn} | {' | '.join(cells)} | {p_txt} | {first_txt} |")
    lines += ["", "| negative control (no image signal) | dataset | " + " | ".join(inits) + " |",
              "|---|---|" + "---|" * len(inits)]
    for ds, r in summary["datasets"].items():
        for lab, by_init in sorted(r["control"].items()):
            cells = [f"{by_init[i]:.3f}" if i in by_init else "–" for i in inits]
            lines.append(f"| {lab} | {ds} | {' | '.join(cells)} |")
    lines.append(f"\nMean negative-control AUROC: {summary['control_mean']:.3f} (expected 0.5).")
    return "\n".join(lines) + "\n"


def write_docs(doc: Path, summary: dict[str, Any], *, provenance: str) -> None:
    """Replace the text between the known-answer markers of ``doc`` with the rendered summary."""
    text = Path(doc).read_text(encoding="utf-8")
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"{doc}: no {BEGIN} ... {END} block to fill")
    body = f"{BEGIN}\n{provenance}\n\n{render_markdown(summary)}{END}"
    Path(doc).write_text(pattern.sub(lambda _: body, text), encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cxrbench.demo.known_answer", description=__doc__.split("\n")[0])
    ap.add_argument("results", type=Path, help="results folder of a finished demo run")
    ap.add_argument("--write-docs", type=Path, help="Markdown file whose known-answer block to refresh")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON instead of Markdown")
    args = ap.parse_args(argv)
    summary = summarise(args.results)
    print(json.dumps(summary, indent=2, sort_keys=True) if args.json else render_markdown(summary))
    if args.write_docs:
        manifest = json.loads((args.results / "demo-data" / "demo-manifest.json").read_text())
        provenance = (f"Measured on a fresh `snakemake --cores all` of the shipped config.yaml (demo generator "
                      f"{manifest['generator_version']}, seed {manifest['seed']}, {manifest['images_per_dataset']} "
                      f"images per dataset); regenerate with `python -m cxrbench.demo.known_answer results "
                      f"--write-docs docs/demo-data.md`.")
        write_docs(args.write_docs, summary, provenance=provenance)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
