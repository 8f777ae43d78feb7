"""The demo is a known-answer experiment (docs/demo-data.md): on the finished demo, trained initialisations
find the learnable findings, the MIMIC-supervised chain beats random, and negative controls score 0.5.

The end-to-end test reads the shared finished demo (tests/slurm/demo_run.py; CI computes it once and hands it
on through CXRBENCH_DEMO_WORKDIR). The fast tests show the checks fail on a label permutation, a flipped score
and a control that leaks signal, using small synthetic results folders.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent / "slurm"))
from cxrbench.demo.known_answer import CONTROL, LEARNABLE, check, render_markdown, summarise
from cxrbench.paths import Layout
from cxrbench.runkey import CellKey, RunKey
from demo_run import completed_demo


@pytest.mark.slow
def test_finished_demo_gives_the_known_answer(tmp_path: Path) -> None:
    work = completed_demo(tmp_path / "work")
    summary = summarise(work / "results")
    print(render_markdown(summary))  # the measured numbers, in the test log
    assert set(summary["datasets"]) == {"vindr", "chestxray14", "chexpert", "mimic", "padchest", "uka"}
    assert all(all(r["learnable_labels"].values()) for r in summary["datasets"].values()), "no learnable findings"
    assert sum(len(r["control"]) for r in summary["datasets"].values()) >= 3, "negative controls missing"
    assert check(summary) == []


# --- the checks themselves, on synthetic results --------------------------------------------------------------

LABELS = ["cardiomegaly", "pleural_effusion", "consolidation", "nodule", "fracture"]


def _results(root: Path, *, permute: bool = False, flip: bool = False, leak: bool = False) -> Path:
    """A results folder with two datasets and random/mimic_sl runs whose scores follow the known answer."""
    rng = np.random.default_rng(0)
    n = 80
    for ds in ("chexpert", "vindr"):
        y = {lab: rng.random(n) < 0.35 for lab in LABELS}
        for init, signal in (("random", 1.2), ("mimic_sl", 3.0)):
            rows = []
            for i, lab in enumerate(LABELS):
                drawn = lab in LEARNABLE or (leak and lab in CONTROL)
                score = rng.normal(size=n) + (signal * y[lab] if drawn else 0.0)
                if flip and init == "mimic_sl" and lab == "cardiomegaly":
                    score = -score
                # A permutation assigns each output to the next label's name, as a shuffled head would.
                name = LABELS[(i + 1) % len(LABELS)] if permute and init == "mimic_sl" else lab
                rows.append(pd.DataFrame({"split": "test", "image_id": [f"i{k}" for k in range(n)], "label": name,
                                          "target": y[name].astype(float), "score": score}))
            out = Layout(root).run_dir(RunKey(init, ds, 32))
            out.mkdir(parents=True, exist_ok=True)
            pd.concat(rows).to_parquet(out / "predictions.parquet")
            # The chain starts ahead after one epoch, unless its head is permuted.
            first = 0.6 if init == "random" or permute else 0.8
            pd.DataFrame({"epoch": [1, 2], "val_auroc_macro": [first, 0.85]}).to_csv(out / "history.csv", index=False)
        stats = Layout(root).stats_dir(CellKey(ds, 32))
        stats.mkdir(parents=True, exist_ok=True)
        pd.DataFrame([{"init_a": "random", "init_b": "mimic_sl", "label": "macro", "level": "macro",
                       "p_a_gt_b": 1.0, "p_b_gt_a": 0.0 if not permute else 0.6, "n_paired": 200}]
                     ).to_parquet(stats / "tests.parquet")
    return root


def test_checks_pass_on_the_known_answer(tmp_path: Path) -> None:
    summary = summarise(_results(tmp_path))
    assert summary["datasets"]["vindr"]["learnable_labels"]["random"] == ["cardiomegaly", "consolidation",
                                                                          "pleural_effusion"]
    assert summary["datasets"]["vindr"]["p_pretrained_gt_ref"] == 0.0
    assert check(summary) == []


def test_checks_fail_on_a_label_permutation(tmp_path: Path) -> None:
    problems = check(summarise(_results(tmp_path, permute=True)))
    assert any("mimic_sl: learnable macro" in p for p in problems), problems
    assert any("pre-trained head does not carry the answer" in p for p in problems), problems


def test_checks_fail_on_a_flipped_score(tmp_path: Path) -> None:
    problems = check(summarise(_results(tmp_path, flip=True)))
    assert any("mimic_sl: learnable macro AUROC" in p for p in problems), problems


def test_checks_fail_when_a_control_carries_signal(tmp_path: Path) -> None:
    problems = check(summarise(_results(tmp_path, leak=True)))
    assert any("negative control fracture" in p for p in problems), problems
