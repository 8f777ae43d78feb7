"""External validation end to end (issue 13's acceptance): the demo on two datasets with ``evaluation.external:
true`` writes ``external.csv``, ``label_overlap.csv``, the paired tests and the figures, and one matrix cell's AUROC
equals sklearn's on the predictions it was computed from.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).parent / "slurm"))
from demo_run import REPO, planned_jobs, snakemake

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def external_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped demo config on CheXpert and MIMIC-CXR (3 runs: random on both, the chain on CheXpert) with
    external validation on: 3 (run, other dataset) predictions and the 2 x 2 matrix (about 3 minutes)."""
    work = tmp_path_factory.mktemp("external")
    config = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    config["datasets"] = {ds: config["datasets"][ds] for ds in ("chexpert", "mimic")}
    config["evaluation"]["external"] = True
    (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    res = snakemake(work, "--configfile", str(work / "config.yaml"), "--cores", "2", timeout=3600)
    ran = [rule for rule, _ in planned_jobs(res.stdout + res.stderr)]
    assert ran.count("external_predict") == 3 and ran.count("external") == 1
    return work


def test_external_matrix_auroc_equals_sklearn_on_the_predictions(external_demo: Path) -> None:
    results = external_demo / "results"
    table = pd.read_csv(results / "tables" / "external.csv")
    pair = table[(table["init"] == "random") & (table["train_dataset"] == "chexpert")
                 & (table["test_dataset"] == "mimic") & (table["label"] != "macro")]
    assert len(pair) >= 3  # CheXpert and MIMIC-CXR share the CheXpert labeller's findings
    row = pair.iloc[0]
    folder = results / "external" / "random" / "chexpert" / "32px" / "finetune" / "frac-1" / "seed-0" / "on-mimic"
    predictions = pd.read_parquet(folder / "predictions.parquet")
    one = predictions[predictions["label"] == row["label"]].dropna(subset=["target"])
    assert row["auroc"] == pytest.approx(roc_auc_score(one["target"].astype(int), one["score"]), abs=1e-9)
    meta = json.loads((folder / "external.json").read_text())
    assert meta["train_dataset"] == "chexpert" and meta["test_dataset"] == "mimic"
    assert row["label"] in meta["labels"]
    # The diagonal is the in-domain result: MIMIC-CXR's own test set for the run trained on it.
    diag = table[(table["init"] == "random") & (table["train_dataset"] == "mimic") & (table["test_dataset"] == "mimic")]
    assert len(diag) > 0


def test_external_tests_overlap_and_figures_are_written(external_demo: Path) -> None:
    results = external_demo / "results"
    overlap = pd.read_csv(results / "tables" / "label_overlap.csv")
    assert {("chexpert", "mimic"), ("mimic", "chexpert")} <= set(zip(overlap["dataset_a"], overlap["dataset_b"]))
    tests = pd.read_csv(results / "tables" / "external_tests.csv")
    cell = tests[(tests["train_dataset"] == "chexpert") & (tests["test_dataset"] == "mimic")]
    assert len(cell) > 0 and cell["p_two_sided"].between(0, 1).all()
    for name in ("external_auroc_random", "external_auroc_mimic_sl", "external_delta_mimic_sl_vs_random",
                 "external_gap"):
        for ext in ("png", "pdf"):
            assert (results / "figures" / f"{name}.{ext}").stat().st_size > 5_000, name
    # Nothing is left to do afterwards (every external output is declared and up to date).
    again = snakemake(external_demo, "-n", "--configfile", str(external_demo / "config.yaml"), "--cores", "2")
    assert planned_jobs(again.stdout + again.stderr) == []
