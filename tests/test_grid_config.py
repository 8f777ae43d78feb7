"""The `grid` config section: validation, the settings each grid job gets, and the run/cell folder layout."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from cxrbench.config import REPO_ROOT, ConfigError, load_config, patch_size, validate_config
from cxrbench.evaluation.outputs import DESCRIPTIONS, describe
from cxrbench.paths import CELL_PATTERN, RUN_PATTERN, Layout
from cxrbench.runkey import CellKey, RunKey, grid_axes, grid_runs
from cxrbench.training.settings import (
    PretrainJob,
    derive_seed,
    features_jobs,
    features_settings,
    pretrain_jobs,
    pretrain_settings,
    replicate_seed,
    resolve_training,
    run_settings,
)


@pytest.fixture()
def raw() -> dict:
    """The shipped demo config, unvalidated (tests add their `grid`)."""
    with open(REPO_ROOT / "config.yaml", encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _valid(raw: dict, **grid) -> dict:
    cfg = copy.deepcopy(raw)
    cfg["grid"] = grid
    return validate_config(cfg)


def test_without_grid_every_axis_has_todays_value(raw: dict) -> None:
    cfg = validate_config(copy.deepcopy(raw))
    axes = grid_axes(cfg)
    assert (axes.sizes, axes.seeds, axes.label_fractions, axes.regimes) == ((32,), (0,), (1.0,), ("finetune",))
    key = RunKey("random", "vindr", 32)
    s = run_settings(cfg, key)
    # today's settings plus the grid's keys; replicate 0 keeps today's training seed
    assert s["seed"] == derive_seed(cfg["seed"], "train", "vindr")
    assert (s["regime"], s["label_fraction"], s["replicate"], s["img_size"], s["variant"]) == (
        "finetune", 1.0, 0, 32, "paper-32")
    targets = ["vindr", "chestxray14", "chexpert", "padchest", "uka"]  # the demo's chain: study transfer
    assert len(grid_runs(cfg)) == 11 and pretrain_jobs(cfg) == [PretrainJob("mimic_sl", t, 32) for t in targets]
    assert features_jobs(cfg) == []


def test_replicates_sizes_and_regimes_in_the_settings(raw: dict) -> None:
    cfg = _valid(raw, sizes=[32, 48], seeds=[0, 3], label_fractions=[0.1, 1], regimes=["finetune", "linear_probe"])
    base = run_settings(cfg, RunKey("random", "vindr", 32))
    rep = run_settings(cfg, RunKey("random", "vindr", 48, "linear_probe", 0.1, 3))
    assert rep["seed"] == replicate_seed(cfg["seed"], "vindr", 3) != base["seed"]
    # the seed is shared by every init, size, regime and fraction of a replicate (paired runs)
    assert rep["seed"] == run_settings(cfg, RunKey("mimic_sl", "vindr", 32, "finetune", 1.0, 3))["seed"]
    assert (rep["img_size"], rep["variant"], rep["label_fraction"], rep["replicate"]) == (48, "paper-48", 0.1, 3)
    assert len({replicate_seed(1, "vindr", r) for r in range(50)}) == 50
    # pre-training: once per size (per target in study transfer), never per seed, fraction or regime
    assert sorted(j.size for j in pretrain_jobs(cfg)) == [32] * 5 + [48] * 5  # the demo's study transfer
    cfg["initialisations"]["mimic_sl"]["transfer"] = "shared_head"
    assert pretrain_jobs(cfg) == [PretrainJob("mimic_sl", None, 32), PretrainJob("mimic_sl", None, 48)]
    assert pretrain_settings(cfg, "mimic_sl", None, 48)["img_size"] == 48
    cfg["initialisations"]["mimic_sl"]["transfer"] = "study"
    assert len(features_jobs(cfg)) == 11 * 2
    feat = features_settings(cfg, "mimic_sl", "vindr", 48)
    assert feat["role"] == "features" and feat["img_size"] == 48 and feat["label_scope"] == "overlap"
    assert not {"replicate", "label_fraction"} & set(feat) and feat["seed"] == replicate_seed(cfg["seed"], "vindr", 0)
    assert set(feat["training"]) == {"batch_size", "deterministic", "normalisation", "precision"}


def test_regime_overrides_reach_only_their_regime() -> None:
    training = {"preset": "paper", "lr": 1e-5, "epochs": 100, "device": "cuda", "grad_checkpointing": True,
                "lora": {"rank": 8}, "regimes": {"linear_probe": {"lr": 1e-3, "epochs": 20}}}
    fine = resolve_training(training)
    probe = resolve_training(training, regime="linear_probe")
    lora = resolve_training(training, regime="lora")
    assert (fine["lr"], fine["epochs"], probe["lr"], probe["epochs"]) == (1e-5, 100, 1e-3, 20)
    assert "lora" not in fine and "lora" not in probe and lora["lora"] == {"rank": 8}
    assert not {"regimes", "device", "grad_checkpointing"} & (set(fine) | set(probe) | set(lora))


@pytest.mark.parametrize(
    ("grid", "match"),
    [
        ({"seeds": [0, 1, 0]}, r"grid\.seeds': 0 given more than once"),
        ({"label_fractions": [0.1, 1, 1.0]}, r"grid\.label_fractions': 1\.0 given more than once"),
        ({"label_fractions": [0.0, 1]}, r"grid\.label_fractions\.0"),
        ({"label_fractions": [1.5]}, r"grid\.label_fractions\.0"),
        ({"regimes": ["finetune", "prompt"]}, r"grid\.regimes\.1"),
        ({"sizes": [32, 40]}, r"grid\.sizes': 40 px is not a multiple of the 16-px patch .*nearest valid sizes: 32, 48"),
        ({"sizes": []}, r"grid\.sizes"),
        ({"colour": 1}, r"unknown config key 'colour' under 'grid'"),
    ],
)
def test_bad_grids_are_refused_naming_the_key(raw: dict, grid: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _valid(raw, **grid)


def test_sizes_must_tile_into_every_patch(raw: dict) -> None:
    raw["initialisations"]["dinov2"] = {"model": "vit_base_patch14_dinov2.lvd142m", "source": "none"}
    with pytest.raises(ConfigError, match=r"512 px is not a multiple of the 14-px patch of initialisation 'dinov2' "
                       r".*nearest valid sizes: 504, 518; for every configured initialisation: 448, 560"):
        _valid(raw, sizes=[224, 512])
    assert grid_axes(_valid(raw, sizes=[224, 448])).sizes == (224, 448)
    assert (patch_size("vit_base_patch14_dinov2.lvd142m"), patch_size("convnext_base.fb_in22k")) == (14, None)
    raw["initialisations"]["dinov2"]["img_size"] = 518  # an init's own size: one grid size only
    with pytest.raises(ConfigError, match=r"initialisations\.dinov2\.img_size': a fixed model size \(518\)"):
        _valid(raw, sizes=[224, 448])
    assert run_settings(_valid(raw, sizes=[224]), RunKey("dinov2", "vindr", 224))["img_size"] == 518


def test_run_and_cell_folders_follow_the_key() -> None:
    layout = Layout("r")
    for key in (RunKey("random", "vindr", 32), RunKey("dinov2", "uka", 448, "linear_probe", 0.01, 3)):
        assert layout.run_dir(key) == Path("r/runs") / RUN_PATTERN.format(**key.wildcards())
        cell = {k: v for k, v in key.wildcards().items() if k != "init"}
        assert layout.stats_dir(key.cell) == Path("r/stats") / CELL_PATTERN.format(**cell)
    assert str(layout.run_dir(RunKey("dinov2", "uka", 448, "lora", 0.1, 2))) == "r/runs/dinov2/uka/448px/lora/frac-0.1/seed-2"
    assert str(layout.stats_dir(CellKey("uka", 224))) == "r/stats/uka/224px/finetune/frac-1/seed-0"
    assert str(layout.pretrain_run_dir("m", "mimic", 224, Layout.pretrain_scope(None))) == "r/pretrain/m/mimic/224px/all-labels"
    assert str(layout.features_dir("m", "uka", 224)) == "r/features/m/uka/224px"
    assert (str(layout.fractions("uka")), str(layout.fraction_counts("uka"))) == (
        "r/uka/fractions.parquet", "r/uka/fractions.counts.csv")
    # the results README describes cell stats files and the grid's outputs
    assert describe("stats/uka/224px/finetune/frac-1/seed-0/metrics.csv") == DESCRIPTIONS["stats/<cell>/metrics.csv"]
    assert describe("tables/grid_deltas.csv") and describe("figures/grid_headline.pdf")


@pytest.mark.parametrize("preset", ["grid.yaml", "demo-grid.yaml"])
def test_grid_presets_are_valid(preset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = yaml.safe_load((REPO_ROOT / "resources" / "presets" / preset).read_text())
    for ds in raw["datasets"].values():  # the study's roots do not exist here: stand-in folders
        if not ds["root"].startswith("results/"):
            ds["root"] = str(tmp_path / ds["root"].strip("/"))
            Path(ds["root"]).mkdir(parents=True)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    axes = grid_axes(load_config(tmp_path / "config.yaml"))
    assert len(axes.sizes) == 2 and len(axes.seeds) >= 2 and len(axes.label_fractions) >= 2
