"""Config layering in real `snakemake -n` runs: a named config file stands on the schema defaults, never on
the demo config.yaml; `--config` overrides apply on top of whichever file is in use; missing roots and
missing weights fail at parse time only where they matter."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cxrbench.config import REPO_ROOT
from test_datasets_fixtures import chexpert_row, write_chexpert, write_mimic

pytestmark = pytest.mark.slow

STUDY = REPO_ROOT / "resources" / "presets" / "study.yaml"
HUB_TAGS = ("vit_base_patch14_dinov2.lvd142m", "vit_base_patch16_224.augreg_in21k")


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """`snakemake -n` on the repository's Snakefile, run from ``workdir`` (where a user's config would live)."""
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "-s", str(REPO_ROOT / "Snakefile"), *args],
        check=False, capture_output=True, text=True, cwd=workdir, timeout=300,
    )


def planned(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """Job counts per rule from the dry run's job-stats table."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    table = out.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.MULTILINE) if m[1] != "job"}


def fake_hf_cache(hf_home: Path) -> None:
    """Weight files where the offline Hugging Face cache keeps them (a dry run only checks they exist)."""
    for tag in HUB_TAGS:
        repo = hf_home / "hub" / f"models--timm--{tag}"
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text("0" * 40)
        (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
        (repo / "snapshots" / ("0" * 40) / "model.safetensors").write_bytes(b"x")


@pytest.fixture()
def study(tmp_path: Path) -> Path:
    """The study preset cut to two real-format datasets (CheXpert, MIMIC-CXR-JPG) whose roots exist."""
    write_chexpert(tmp_path / "data" / "chexpert",
                   [chexpert_row("train", p, 1, "view1_frontal", "Frontal", "PA", Cardiomegaly=1.0)
                    for p in range(1, 5)],
                   [chexpert_row("valid", 9, 1, "view1_frontal", "Frontal", "AP", Edema=1.0)])
    write_mimic(tmp_path / "data" / "mimic")
    cfg = yaml.safe_load(STUDY.read_text())
    cfg["datasets"] = {
        "chexpert": {**cfg["datasets"]["chexpert"], "root": str(tmp_path / "data" / "chexpert")},
        "mimic": {**cfg["datasets"]["mimic"], "root": str(tmp_path / "data" / "mimic")},
    }
    cfg["weights"] = {"hf_home": str(tmp_path / "hf")}
    path = tmp_path / "my_study.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    (tmp_path / "config.yaml").write_text((REPO_ROOT / "config.yaml").read_text())  # the demo beside it
    return path


def test_named_config_plans_only_its_datasets_and_no_demo(study: Path) -> None:
    fake_hf_cache(study.parent / "hf")
    jobs = planned(snakemake(study.parent, "--configfile", str(study)))
    assert "demo_data" not in jobs
    assert jobs["index"] == 2 and jobs["harmonise"] == 2
    # every init on chexpert, all but the pipeline arm on its own pre-training data; one study pre-training
    assert jobs["train"] == 4 + 3 and jobs["pretrain"] == 1


def test_missing_root_of_named_config_fails_at_parse_time(study: Path) -> None:
    cfg = yaml.safe_load(study.read_text())
    cfg["datasets"]["chexpert"]["root"] = str(study.parent / "nowhere")
    study.write_text(yaml.safe_dump(cfg))
    proc = snakemake(study.parent, "--configfile", str(study))
    assert proc.returncode != 0
    assert "datasets.chexpert.root" in proc.stdout + proc.stderr and "does not exist" in proc.stdout + proc.stderr


def test_labels_are_planned_before_the_weights_arrive(study: Path) -> None:
    """No training requested: missing weights must not block labels, preprocessing or caches."""
    jobs = planned(snakemake(study.parent, "results/chexpert/labels.parquet", "--configfile", str(study)))
    assert jobs == {"index": 1, "harmonise": 1}
    proc = snakemake(study.parent, "--configfile", str(study))  # the default target trains: weights needed
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "Pretrained weights are missing" in out and "cxrbench weights fetch" in out
    assert "dinov2" in out and "imagenet21k" in out


def test_config_overrides_apply_to_the_demo_and_to_a_named_file(study: Path) -> None:
    workdir = study.parent
    assert planned(snakemake(workdir))["index"] == 6  # no file named: the shipped demo, all six datasets
    proc = snakemake(workdir, "elsewhere/vindr/labels.parquet", "--config", "results=elsewhere")
    assert planned(proc) == {"demo_data": 1, "index": 1, "harmonise": 1}
    proc = snakemake(workdir, "mine/chexpert/labels.parquet", "--configfile", str(study), "--config", "results=mine")
    assert planned(proc) == {"index": 1, "harmonise": 1}
