"""The compute plan (issue 13 section 2): FLOPs from PyTorch's counter, sums, the seed axis, runtime caps, the CLI."""

from __future__ import annotations

import copy
import math
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from cxrbench.config import REPO_ROOT, validate_config
from cxrbench.plan import PlanError, build_plan, gpu_spec, model_shape, planned_resources
from cxrbench.plan.estimates import dataset_images, expected_epochs
from cxrbench.plan.model import sustained_flops
from cxrbench.runkey import RunKey

STUDY = REPO_ROOT / "resources" / "presets" / "study.yaml"


def _config(tmp_path: Path, **grid: Any) -> dict[str, Any]:
    """Two datasets with existing roots, a random and a pipeline (study transfer) tiny ViT at 32 px; grid after validation."""
    for ds in ("vindr", "mimic"):
        (tmp_path / ds).mkdir(exist_ok=True)
    config = validate_config({
        "results": str(tmp_path / "results"),
        "datasets": {"vindr": {"adapter": "vindr", "root": str(tmp_path / "vindr")},
                     "mimic": {"adapter": "mimic", "root": str(tmp_path / "mimic")}},
        "initialisations": {
            "random": {"model": "vit_tiny_patch16_224", "source": "none"},
            "chain": {"model": "vit_tiny_patch16_224", "source": "pipeline", "pretrain_dataset": "mimic",
                      "pretrain_init": "random", "transfer": "study", "pretrain_training": {"epochs": 4}},
        },
        "preprocess": {"size": 32},
        "training": {"epochs": 20, "patience": 3, "batch_size": 16},
        "plan": {"gpu": "A100-80GB"},
    })
    config["grid"] = {"sizes": [32, 64], "seeds": [1, 2], "label_fractions": [0.1, 1.0],
                      "regimes": ["finetune", "linear_probe", "lora"], **grid}
    config["evaluation"]["external"] = True
    return config


def test_flops_of_a_tiny_vit_match_a_hand_count() -> None:
    shape = model_shape("vit_tiny_patch16_224", img_size=32)
    tokens, width, depth, classes = 2 * 2 + 1, 192, 12, 14
    # per block: qkv, proj, fc1, fc2 = 12 width^2 multiply-adds per token; q k^T and attn v = 2 tokens^2 width
    block = 2 * tokens * 12 * width**2 + 2 * 2 * tokens**2 * width
    patch_embed = 2 * (2 * 2) * width * (3 * 16 * 16)
    head = 2 * width * classes
    assert shape.forward_flops == pytest.approx(depth * block + patch_embed + head, rel=0.02)
    assert (shape.tokens, shape.width, shape.depth) == (tokens, width, depth)


def test_totals_are_the_sums_of_the_rows(tmp_path: Path) -> None:
    plan = build_plan(_config(tmp_path))
    kinds = {j.kind for j in plan.jobs}
    assert kinds == {"train", "pretrain", "features", "external"}
    total = plan.total()
    assert total["jobs"] == len(plan.jobs)
    assert total["device_h_max"] == pytest.approx(math.fsum(j.device_h_max for j in plan.jobs), rel=1e-12)
    assert total["device_h_max"] == pytest.approx(
        math.fsum(j.train_h_max + j.inference_h + j.startup_h for j in plan.jobs), rel=1e-12)
    for axis in ("init", "dataset", "size", "regime", "fraction", "seed"):
        parts = plan.by_axis(axis)
        assert sum(p["jobs"] for p in parts.values()) == total["jobs"], axis
        assert math.fsum(p["device_h_expected"] for p in parts.values()) == pytest.approx(total["device_h_expected"])
    # 2 datasets x 2 inits - the pipeline's own pre-training dataset = 3 (init, dataset) pairs, x 2 x 2 x 2 x 3
    assert sum(j.kind == "train" for j in plan.jobs) == 3 * 24
    assert sum(j.kind == "pretrain" for j in plan.jobs) == 2  # target vindr, once per size
    assert sum(j.kind == "features" for j in plan.jobs) == 3 * 2
    assert sum(j.kind == "external" for j in plan.jobs) == 3 * 24  # each run on the one other dataset


def test_adding_a_seed_adds_exactly_the_new_seed_jobs(tmp_path: Path) -> None:
    small = build_plan(_config(tmp_path))
    big = build_plan(_config(tmp_path, seeds=[1, 2, 3]))
    added = [j for j in big.jobs if j.seed == 3]
    assert added and {j.kind for j in added} == {"train", "external"}
    assert {j for j in big.jobs if j.seed != 3} == set(small.jobs)
    for key in ("device_h_max", "device_h_expected", "jobs"):
        assert big.total()[key] - small.total()[key] == pytest.approx(big.total(added)[key], rel=1e-9)


def test_step_costs_by_regime_and_early_stopping(tmp_path: Path) -> None:
    config = _config(tmp_path)
    plan = build_plan(config)
    run = {(j.regime, j.size): j for j in plan.jobs if j.kind == "train" and j.init == "random"
           and j.dataset == "mimic" and j.fraction == 1.0 and j.seed == 1}
    ft, lora, probe = run["finetune", 32], run["lora", 32], run["linear_probe", 32]
    f = model_shape("vit_tiny_patch16_224", img_size=32).forward_flops
    per_s = sustained_flops(gpu_spec("A100-80GB"), precision="bf16")
    val = dataset_images(config, "mimic").val
    # an epoch: 3 forward passes per training image (fine-tune) or 2 (LoRA), then one over validation
    assert ft.train_h_max == pytest.approx(20 * (3 * ft.images + val) * f / per_s / 3600, rel=1e-9)
    assert lora.train_h_max == pytest.approx(20 * (2 * lora.images + val) * f / per_s / 3600, rel=1e-9)
    assert probe.train_h_max == 0 and probe.inference_h == 0  # the probe trains on extracted features
    assert ft.epochs_expected == expected_epochs(20, 3) == 5  # best epoch at 10 % of 20, then patience 3
    assert ft.train_h_expected == pytest.approx(ft.train_h_max * 5 / 20)
    assert run["finetune", 64].train_h_max > 3 * ft.train_h_max  # 16 patches instead of 4


def test_counts_come_from_labels_parquet_when_present(tmp_path: Path) -> None:
    config = _config(tmp_path)
    labels = Path(config["results"]) / "vindr" / "labels.parquet"
    labels.parent.mkdir(parents=True)
    pd.DataFrame({"split": ["train"] * 7 + ["val"] * 2 + ["test"] * 3}).to_parquet(labels)
    plan = build_plan(config)
    vindr = next(d for d in plan.datasets if d.dataset == "vindr")
    mimic = next(d for d in plan.datasets if d.dataset == "mimic")
    assert (vindr.images.train, vindr.images.val, vindr.images.test, vindr.images.source) == (7, 2, 3, "labels.parquet")
    assert mimic.images.total == 213_921 and "the adapter's default" in mimic.images.source
    assert mimic.images.test == 5_159  # the official MIMIC-CXR-JPG test split
    assert vindr.cache_gb == pytest.approx(12 * 32 * 32 / 1e9)


def test_planned_runtime_is_scaled_capped_and_floored(tmp_path: Path) -> None:
    config = _config(tmp_path)
    key = RunKey("random", "mimic", 64, "finetune", 1.0, 1)
    job = build_plan(config).runs[key]
    res = planned_resources(config, key)
    assert res["runtime"] == max(10, math.ceil(job.device_h_max * 60 * 1.5))
    assert res["mem_mb"] >= 3500 * 1.5
    capped = copy.deepcopy(config)
    capped["plan"].update(gpu="cpu", partition_limit_minutes=30)
    assert build_plan(capped).runs[key].device_h_max * 60 * 1.5 > 30  # the estimate exceeds the partition
    assert planned_resources(capped, key)["runtime"] == 30
    floored = copy.deepcopy(config)
    floored["plan"].update(min_runtime_minutes=45)
    assert planned_resources(floored, key)["runtime"] == 45


def test_unknown_gpu_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match=r"unknown GPU 'B300'.*H100-SXM.*A100-80GB.*cpu"):
        gpu_spec("B300")
    assert gpu_spec("h100 sxm").gpu == "H100-SXM"
    with pytest.raises(PlanError, match="no bf16 peak"):
        build_plan(_config(tmp_path), gpu="V100")  # V100 has no bf16 tensor cores; training.precision is bf16


def _cli(cwd: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "cxrbench.cli", "plan", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return proc, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def test_cli_plans_the_study_preset_in_under_10_s(tmp_path: Path) -> None:
    # cold: no cached model shapes under tmp_path/results; CPU time, because the wall clock of a shared machine
    # measures its other users
    proc, cpu_s = _cli(tmp_path, "--configfile", str(STUDY), "--gpu", "H100-SXM")
    assert proc.returncode == 0, proc.stderr
    assert cpu_s < 10
    assert "Compute plan on H100-SXM" in proc.stdout and "dinov2" in proc.stdout
    assert "dataset folders not found" in proc.stderr
    proc, _ = _cli(tmp_path, "--configfile", str(STUDY), "--gpu", "B300")
    assert proc.returncode == 2 and "unknown GPU 'B300'" in proc.stderr and "H200" in proc.stderr


def test_resource_table_sizes_every_planned_job_of_the_workflow(tmp_path: Path) -> None:
    from cxrbench.plan import planned_features_resources, planned_pretrain_resources, resource_table
    from cxrbench.runkey import grid_runs
    from cxrbench.training.settings import pretrain_jobs

    config = _config(tmp_path)
    table = resource_table(config)
    runs = grid_runs(config)
    probes = {("features", k.init, k.dataset, k.size) for k in runs if k.regime == "linear_probe"}
    pretrain = {("pretrain", *job) for job in pretrain_jobs(config)}
    assert set(table) == {("train", k) for k in runs} | pretrain | probes
    pre = planned_pretrain_resources(config, init="chain", target="vindr", size=64)
    assert pre == table["pretrain", "chain", "vindr", 64]
    probe = planned_features_resources(config, init="random", dataset="mimic", size=32)
    assert probe == table["features", "random", "mimic", 32]
    with pytest.raises(ValueError, match="no features job"):
        planned_features_resources(config, init="random", dataset="padchest", size=32)


def _fake_dag(*rules: str) -> Any:
    """The part of Snakemake's DAG that start_summary reads: the rule of each job still to run."""
    from types import SimpleNamespace

    jobs = [SimpleNamespace(rule=SimpleNamespace(name=r)) for r in rules]
    return SimpleNamespace(needrun_jobs=lambda: iter(jobs))


def test_start_summary_only_when_a_planned_job_is_pending(tmp_path: Path) -> None:
    from cxrbench.plan.estimates import start_summary

    config = _config(tmp_path)
    assert start_summary(config, _fake_dag("harmonise", "evaluate")) == ""
    assert start_summary(config, _fake_dag()) == ""
    for rule in ("train", "pretrain", "features"):
        assert start_summary(config, _fake_dag("harmonise", rule)).startswith("Compute plan on A100-80GB")
    quiet = copy.deepcopy(config)
    quiet["plan"]["summary"] = False
    assert start_summary(quiet, _fake_dag("train")) == ""
