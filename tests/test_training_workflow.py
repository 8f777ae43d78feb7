"""train.smk: the runs, the MIMIC pre-training chain in the DAG, parse-time weight checks, and the
settings/preset functions the rules call (the grid's axes: tests/test_grid_*.py)."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from cxrbench.config import REPO_ROOT, ConfigError, validate_config
from cxrbench.models.registry import init_spec
from cxrbench.paths import Layout
from cxrbench.runkey import RunKey, grid_runs
from cxrbench.training.settings import (
    PretrainJob,
    derive_seed,
    pretrain_jobs,
    pretrain_run_dir,
    pretrain_settings,
    resolve_training,
    run_settings,
)


@pytest.fixture()
def config() -> dict:
    """The demo config with the chain in `backbone` transfer (one pre-training job) at 64 px; the tests set
    `study` transfer themselves where they need it, so they do not follow the demo's own choice."""
    with open(REPO_ROOT / "config.yaml", encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh)
    cfg["initialisations"]["mimic_sl"]["transfer"] = "backbone"
    cfg["preprocess"]["size"] = 64
    return validate_config(cfg)


def test_run_grid_skips_the_pipeline_init_on_its_own_data(config: dict) -> None:
    runs = [(k.init, k.dataset) for k in grid_runs(config)]
    assert ("mimic_sl", "mimic") not in runs and ("random", "mimic") in runs
    assert len(runs) == len(config["initialisations"]) * len(config["datasets"]) - 1
    # backbone transfer: one pre-training for all targets
    assert pretrain_jobs(config) == [PretrainJob("mimic_sl", None, 64)]
    study = copy.deepcopy(config)
    study["initialisations"]["mimic_sl"]["transfer"] = "study"
    assert pretrain_jobs(study) == [PretrainJob("mimic_sl", d, 64) for d in config["datasets"] if d != "mimic"]
    spec = init_spec(study, "mimic_sl")
    assert pretrain_run_dir(Layout("r"), spec, "vindr", 64) == Path("r/pretrain/mimic_sl/mimic/64px/for-vindr")
    with pytest.raises(ConfigError, match="not a separate arm"):
        run_settings(config, RunKey("mimic_sl", "mimic", 64))


def test_settings_hold_what_changes_results_only(config: dict) -> None:
    s = run_settings(config, RunKey("random", "vindr", 64))
    assert s["img_size"] == config["preprocess"]["size"] and s["label_scope"] == "all"
    assert (
        s["seed"]
        == derive_seed(config["seed"], "train", "vindr")
        == run_settings(config, RunKey("mimic_sl", "vindr", 64))["seed"]
    )
    assert not {"device", "num_workers", "gpus", "mem_mb", "runtime_minutes", "retries", "grad_checkpointing"} & set(
        s["training"]
    )
    assert s["training"]["normalisation"] == "none" and s["training"]["schedule"] == "none"  # the paper preset
    p = pretrain_settings(config, "mimic_sl", None, 64)
    assert p["role"] == "pretrain" and p["dataset"] == "mimic" and p["init"]["name"] == "random"
    modern = resolve_training({"preset": "modern", "lr": 1e-4})
    assert modern["normalisation"] == "model" and modern["schedule"] == "cosine" and modern["lr"] == 1e-4
    assert resolve_training({"preset": "modern", "normalisation": "none"})["normalisation"] == "none"
    assert derive_seed(1, "a") != derive_seed(1, "b") and derive_seed(1, "a") == derive_seed(1, "a")


def _workflow(tmp_path: Path, config: dict) -> Path:
    """A Snakefile with only common.smk + train.smk, and empty stand-ins for the files earlier stages write."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    rules = REPO_ROOT / "workflow" / "rules"
    (tmp_path / "Snakefile").write_text(
        f'configfile: "config.yaml"\ninclude: "{rules / "common.smk"}"\ninclude: "{rules / "train.smk"}"\n'
        "rule all:\n    input: train_targets()\n"
    )
    layout = Layout(tmp_path / config["results"])
    variant = Layout.variant(config["preprocess"]["mode"], config["preprocess"]["size"])
    for ds in config["datasets"]:  # the stand-ins of one size only: grid tests write their own
        for path in [layout.labels(ds), layout.manifest(ds, variant)] + [
            layout.cache_dir(ds, variant) / f"{s}{e}"
            for s in ("train", "val", "test")
            for e in (".npy", ".index.parquet")
        ]:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    return tmp_path


def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(workdir / "Snakefile"),
            "-d",
            str(workdir),
            "-n",
            "-p",
            "-c1",
            *args,
        ],
        capture_output=True,
        check=False,
        text=True,
        timeout=300,
    )


def test_dag_chains_pretraining_into_the_pipeline_runs(config: dict, tmp_path: Path) -> None:
    config["results"] = "res"
    proc = _snakemake(_workflow(tmp_path, config))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    counts = dict(re.findall(r"^(train|pretrain)\s+(\d+)\s*$", out, flags=re.MULTILINE))
    assert counts == {"train": "11", "pretrain": "1"}
    pre = "res/pretrain/mimic_sl/mimic/64px/all-labels"
    assert f"--init-checkpoint {pre}/best.pt" in out
    assert "--out res/runs/mimic_sl/vindr/64px/finetune/frac-1/seed-0" in out and "res/runs/mimic_sl/mimic" not in out
    assert "--cache-dir res/vindr/cache/paper-64" in out and "--device cpu" in out


def test_missing_weights_fail_at_parse_time_with_the_fetch_command(config: dict, tmp_path: Path) -> None:
    config["weights"] = {"hf_home": "wcache", "dir": "wdir"}
    config["initialisations"]["dinov2"] = {"model": "vit_base_patch14_dinov2.lvd142m", "source": "hub"}
    config["preprocess"]["size"] = 112  # a multiple of both patch sides (14, 16): the grid refuses 64 for DINOv2
    proc = _snakemake(_workflow(tmp_path, config))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "cxrbench weights fetch --model vit_base_patch14_dinov2.lvd142m --hf-home wcache" in out
    assert "Pretrained weights are missing" in out and "models--timm--vit_base_patch14_dinov2.lvd142m" in out


def _dry_run_jobs(output: str) -> list[tuple[str, dict[str, str], dict[str, str]]]:
    """(rule, wildcards, resources) of every job block of a `snakemake -n` log."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", output):
        header = re.match(r"(?:local)?rule (\w+):\n", block)
        if header is None:
            continue
        fields = {}
        for name in ("wildcards", "resources"):
            line = re.search(rf"^    {name}: (.*)$", block, flags=re.MULTILINE)
            fields[name] = dict(p.split("=", 1) for p in line.group(1).split(", ")) if line else {}
        jobs.append((header.group(1), fields["wildcards"], fields["resources"]))
    return jobs


def test_training_jobs_request_the_planned_runtime_and_memory(
    config: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cxrbench.plan import planned_features_resources, planned_pretrain_resources, planned_resources

    config["results"] = "res"
    config["grid"] = {"regimes": ["finetune", "linear_probe"]}  # linear_probe adds the features jobs
    config["plan"] = {"gpu": "cpu", "min_runtime_minutes": 1}  # no floor, so each job's own estimate shows
    work = _workflow(tmp_path, config)
    # image counts differ per dataset, so a job requesting another job's resources fails the comparison
    for i, ds in enumerate(config["datasets"]):
        n = 4000 * (i + 1)
        splits = ["train"] * n + ["val"] * (n // 10) + ["test"] * (n // 5)
        pd.DataFrame({"split": splits}).to_parquet(Layout(work / "res").labels(ds))
    proc = _snakemake(work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = [j for j in _dry_run_jobs(proc.stdout + proc.stderr) if j[0] in {"train", "pretrain", "features"}]
    assert sorted({j[0] for j in jobs}) == ["features", "pretrain", "train"]

    monkeypatch.chdir(work)  # the plan reads res/<ds>/labels.parquet as the workflow did
    validate_config(config)
    runtimes = set()
    for rule, w, res in jobs:
        if rule == "train":
            want = planned_resources(config, RunKey.from_wildcards(SimpleNamespace(**w)))
        elif rule == "pretrain":
            target = None if w["scope"] == "all-labels" else w["scope"].removeprefix("for-")
            want = planned_pretrain_resources(config, init=w["init"], target=target, size=int(w["size"]))
        else:
            want = planned_features_resources(config, init=w["init"], dataset=w["ds"], size=int(w["size"]))
        assert (int(res["runtime"]), int(res["mem_mb"])) == (want["runtime"], want["mem_mb"]), (rule, w)
        runtimes.add(want["runtime"])
    assert len(runtimes) > 3  # the jobs' estimates differ: nothing was floored into one value


def test_onstart_prints_the_plan_only_when_training_is_pending(config: dict, tmp_path: Path) -> None:
    """A real (touch) run of the repository's Snakefile: its `onstart` prints the plan for a pending train job,
    not for a pending non-training job; an up-to-date rerun never reaches `onstart`."""
    config["results"] = "res"
    work = _workflow(tmp_path, config)
    key = RunKey("random", "vindr", config["preprocess"]["size"])
    run = Layout(work / "res").run_dir(key)
    fractions = Layout(work / "res").fractions("vindr")
    for out in [run / "best.pt", run / "history.csv", run / "predictions.parquet", run / "run.json", fractions]:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.touch()
        os.utime(out, (1, 1))  # older than the stand-in inputs: its job must run again

    def touch_run(*targets: Path) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "snakemake", *(str(t.relative_to(work)) for t in targets), "-s", str(REPO_ROOT / "Snakefile"), "-d",
             str(work), "-c1", "--touch", "--allowed-rules", "train", "fractions"],
            capture_output=True, check=False, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stderr

    out = touch_run(fractions)
    assert "rule fractions:" in out and "Compute plan" not in out  # pending, but not a planned job
    out = touch_run(run / "best.pt")
    assert "Compute plan on cpu" in out and out.index("Compute plan on cpu") < out.index("rule train:")
    again = touch_run(run / "best.pt")
    assert "Nothing to be done" in again and "Compute plan" not in again
