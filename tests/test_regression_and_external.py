"""One small end-to-end workflow, two checks: a config without `grid` gives the same numbers in the same tables as
before the experiment grid existed (issue 12), and external validation works end to end (issue 13).

tests/data/grid-regression/config.yaml is a small end-to-end workflow (three demo datasets at 32 px, random
initialisation vs the MIMIC chain in the study's per-target transfer, one fine-tuning epoch, 50 bootstrap
resamples). Its expected tables, tests/data/grid-regression/tables/*.csv, were produced by the code *before* the
grid (main at commit 2aad859, `snakemake --configfile config.yaml -c2` in an empty folder; tests/data/README.md).
The run here adds `evaluation.external: true`, which only adds jobs (evaluation does not see the key), so the same
run requires every pre-grid table to be byte-identical and no grid output to appear, and checks the external
matrix: one cell's AUROC against sklearn on its predictions, the paired tests and the figures.
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
from demo_run import planned_jobs, snakemake

pytestmark = pytest.mark.slow

DATA = Path(__file__).parent / "data" / "grid-regression"


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The regression workflow with external validation on (5 runs, 10 (run, other dataset) predictions)."""
    work = tmp_path_factory.mktemp("small")
    config = yaml.safe_load((DATA / "config.yaml").read_text(encoding="utf-8"))
    config.setdefault("evaluation", {})["external"] = True
    (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    res = snakemake(work, "--configfile", str(work / "config.yaml"), "--cores", "2", timeout=1800)
    ran = [rule for rule, _ in planned_jobs(res.stdout + res.stderr)]
    assert ran.count("external_predict") == 10 and ran.count("external") == 1
    return work


def test_config_without_grid_reproduces_the_tables_from_before_the_grid(small_run: Path) -> None:
    tables = small_run / "results" / "tables"
    expected = sorted(p.name for p in (DATA / "tables").glob("*.csv"))
    external = {"label_overlap.csv", "external.csv", "external_tests.csv", "external_gap.csv"}
    assert sorted(p.name for p in tables.glob("*.csv") if p.name not in external) == expected
    for name in expected:
        assert (tables / name).read_bytes() == (DATA / "tables" / name).read_bytes(), name
    assert (small_run / "results" / "runs" / "mimic_sl" / "vindr" / "32px" / "finetune" / "frac-1" / "seed-0").is_dir()
    assert not list((small_run / "results" / "figures").glob("grid_*"))  # one cell per dataset: no grid job


def test_external_matrix_auroc_equals_sklearn_on_the_predictions(small_run: Path) -> None:
    results = small_run / "results"
    table = pd.read_csv(results / "tables" / "external.csv")
    pair = table[(table["init"] == "random") & (table["train_dataset"] == "chexpert")
                 & (table["test_dataset"] == "mimic") & (table["level"] == "label")]
    assert len(pair) >= 3  # CheXpert and MIMIC-CXR share the CheXpert labeller's findings
    row = pair.iloc[0]
    folder = results / "external" / "random" / "chexpert" / "32px" / "finetune" / "frac-1" / "seed-0" / "on-mimic"
    predictions = pd.read_parquet(folder / "predictions.parquet")
    one = predictions[predictions["label"] == row["label"]].dropna(subset=["target"])
    assert row["auroc"] == pytest.approx(roc_auc_score(one["target"].astype(int), one["score"]), abs=1e-9)
    meta = json.loads((folder / "external.json").read_text(encoding="utf-8"))
    assert (meta["train_dataset"], meta["test_dataset"]) == ("chexpert", "mimic") and row["label"] in meta["labels"]
    # The diagonal is the in-domain result: the run's own test set.
    diag = table[(table["init"] == "random") & (table["train_dataset"] == "mimic") & (table["test_dataset"] == "mimic")]
    assert len(diag) > 0 and diag["in_domain"].astype(bool).all()


def test_external_tests_overlap_and_figures_are_written(small_run: Path) -> None:
    results = small_run / "results"
    overlap = pd.read_csv(results / "tables" / "label_overlap.csv")
    assert {("chexpert", "mimic"), ("mimic", "vindr")} <= set(zip(overlap["dataset_a"], overlap["dataset_b"]))
    tests = pd.read_csv(results / "tables" / "external_tests.csv")
    cell = tests[(tests["train_dataset"] == "chexpert") & (tests["test_dataset"] == "mimic")]
    assert len(cell) > 0 and cell["p_two_sided"].between(0, 1).all()
    for name in ("external_auroc_random", "external_auroc_mimic_sl", "external_delta_mimic_sl_vs_random",
                 "external_gap"):
        for ext in ("png", "pdf"):
            assert (results / "figures" / f"{name}.{ext}").stat().st_size > 5_000, name
    again = snakemake(small_run, "-n", "--configfile", str(small_run / "config.yaml"), "--cores", "2")
    assert planned_jobs(again.stdout + again.stderr) == []  # every output declared and up to date
