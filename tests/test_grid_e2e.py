"""The demo grid end to end (issue 12's acceptance): ``resources/presets/demo-grid.yaml`` runs on CPU through every
stage, ``grid.csv`` has exactly the expected rows, linear probes and label fractions train for real, and adding a seed
plans only its runs, their cells and the grid aggregate.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from cxrbench.config import validate_config
from cxrbench.paths import Layout
from cxrbench.runkey import CellKey, format_fraction, grid_runs

sys.path.insert(0, str(Path(__file__).parent / "slurm"))
from demo_run import REPO, planned_jobs, snakemake

pytestmark = pytest.mark.slow

PRESET = REPO / "resources" / "presets" / "demo-grid.yaml"


@pytest.fixture(scope="module")
def grid_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run of the demo grid (about 6 minutes on 2 cores)."""
    work = tmp_path_factory.mktemp("demo-grid")
    (work / "grid.yaml").write_text(PRESET.read_text(encoding="utf-8"), encoding="utf-8")
    snakemake(work, "--configfile", str(work / "grid.yaml"), "--cores", "2", timeout=3600)
    return work


def _config(work: Path, name: str = "grid.yaml") -> dict:
    raw = yaml.safe_load((work / name).read_text(encoding="utf-8"))
    raw["results"] = str(work / raw["results"])
    for entry in raw["datasets"].values():
        entry["root"] = str(work / entry["root"])
    raw["demo"]["root"] = str(work / raw["demo"]["root"])
    return validate_config(raw)


def test_grid_csv_has_exactly_the_expected_rows(grid_demo: Path) -> None:
    config = _config(grid_demo)
    layout = Layout(config["results"])
    grid = pd.read_csv(layout.tables_dir() / "grid.csv", dtype={"seed": str})
    assert list(grid.columns) == ["init", "dataset", "size", "regime", "label_fraction", "seed", "label", "auroc",
                                  "ci_low", "ci_high"]
    expected = set()
    for key in grid_runs(config):
        labels = list(pd.read_parquet(layout.run_dir(key) / "predictions.parquet")["label"].unique())
        for seed in (str(key.seed), "pooled"):
            for label in [*labels, "macro"]:
                expected.add((key.init, key.dataset, key.size, key.regime, format_fraction(key.fraction), seed, label))
    got = [(r.init, r.dataset, r.size, r.regime, format_fraction(r.label_fraction), r.seed, r.label)
           for r in grid.itertuples(index=False)]
    assert len(got) == len(set(got)) == len(expected)  # 3 (init, dataset) pairs x 8 cells x (2 seeds + pooled)
    assert set(got) == expected
    macro = grid[grid["label"] == "macro"]
    assert macro["auroc"].between(0, 1).all() and (macro["ci_low"] <= macro["ci_high"]).all()
    # Each per-seed row is the bootstrap mean of its cell's own evaluation.
    cell = CellKey("chexpert", 48, "linear_probe", 0.1, 1)
    metrics = pd.read_parquet(layout.stats_dir(cell) / "metrics.parquet")
    want = metrics[(metrics["init"] == "random") & (metrics["label"] == "macro")]["auroc_boot_mean"].iloc[0]
    row = grid[(grid["init"] == "random") & (grid["dataset"] == "chexpert") & (grid["size"] == 48)
               & (grid["regime"] == "linear_probe") & (grid["label_fraction"] == 0.1) & (grid["seed"] == "1")
               & (grid["label"] == "macro")]
    assert row["auroc"].iloc[0] == pytest.approx(want, abs=1e-9)
    deltas = pd.read_csv(layout.tables_dir() / "grid_deltas.csv", dtype={"seed": str})
    assert set(deltas["seed"]) == {"0", "1", "pooled"} and (deltas["init_a"] == "mimic_sl").all()
    for name in ("grid_size", "grid_label_efficiency", "grid_regimes", "grid_seed_spread", "grid_headline"):
        assert (layout.figures_dir() / f"{name}.png").stat().st_size > 10_000, name


def test_probes_and_label_fractions_train_for_real(grid_demo: Path) -> None:
    config = _config(grid_demo)
    layout = Layout(config["results"])
    import json

    runs = {k: json.loads((layout.run_dir(k) / "run.json").read_text()) for k in grid_runs(config)
            if k.init == "random" and k.dataset == "chexpert" and k.size == 32 and k.seed == 0}
    by = {(k.regime, k.fraction): r for k, r in runs.items()}
    full, tenth = by[("finetune", 1.0)], by[("finetune", 0.1)]
    assert tenth["images"]["train"] < full["images"]["train"] / 2  # nested subset, at least one positive per label
    probe = by[("linear_probe", 1.0)]
    n_labels = len(probe["labels"])
    assert probe["regime"] == "linear_probe" and probe["trainable_parameters"] == 192 * n_labels + n_labels
    assert full["trainable_parameters"] > 5_000_000  # the whole ViT-Tiny
    features = layout.features_dir("random", "chexpert", 32)
    assert (features / "train.npy").is_file() and (features / "features.json").is_file()
    counts = pd.read_csv(layout.fraction_counts("chexpert"))
    assert set(counts["fraction"]) == {0.1, 1.0}


def test_adding_a_seed_plans_only_its_runs_its_cells_and_the_grid(grid_demo: Path) -> None:
    raw = yaml.safe_load((grid_demo / "grid.yaml").read_text(encoding="utf-8"))
    raw["grid"]["seeds"] = [*raw["grid"]["seeds"], 2]
    (grid_demo / "grid-3-seeds.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    res = snakemake(grid_demo, "-n", "--configfile", str(grid_demo / "grid-3-seeds.yaml"), "--cores", "2")
    jobs = planned_jobs(res.stdout + res.stderr)
    rules = [rule for rule, _ in jobs]
    assert set(rules) == {"train", "evaluate", "grid"}, sorted(set(rules))
    assert all(wc["seed"] == "2" for rule, wc in jobs if rule in ("train", "evaluate"))
    assert rules.count("train") == 3 * 2 * 2 * 2  # (init, dataset) pairs x sizes x regimes x fractions
    assert rules.count("evaluate") == 2 * 2 * 2 * 2  # datasets x sizes x regimes x fractions
    assert rules.count("grid") == 1
