"""The whole demo through `snakemake --cores all --profile slurm` on a real SLURM scheduler.

Needs a controller with a GPU GRES node (``.ci/slurm-up.sh``); skipped with the reason otherwise.
Snakemake is started from the repository root so that ``--profile slurm`` resolves exactly as a user
types it. Checks that every training job was submitted with a GPU request, that the results equal a
local run's (computed here, or copied from $CXRBENCH_DEMO_WORKDIR), and that a second invocation
through the profile has nothing to do.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent / "slurm"))
from cluster import REPO, scontrol_job, slurm_ready
from demo_run import completed_demo, planned_jobs, snakemake

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

FAST_STATUS = ["--slurm-init-seconds-before-status-checks", "5", "--slurm-keep-successful-logs"]


def _job_ids(workdir: Path, rule: str) -> list[str]:
    logs = sorted((workdir / ".snakemake" / "slurm_logs" / f"rule_{rule}").glob("**/*.log"))
    return [p.stem for p in logs if re.fullmatch(r"\d+", p.stem)]


def _same_files(a: Path, b: Path, pattern: str) -> list[str]:
    """Relative paths matching ``pattern`` under both trees (must be the same set)."""
    left = sorted(p.relative_to(a).as_posix() for p in a.glob(pattern))
    right = sorted(p.relative_to(b).as_posix() for p in b.glob(pattern))
    assert left == right, f"{pattern}: local has {left}, SLURM has {right}"
    assert left, f"no file matches {pattern}"
    return left


def test_demo_through_the_slurm_profile_equals_a_local_run(tmp_path: Path) -> None:
    ok, why = slurm_ready()
    if not ok:
        pytest.skip(why)
    work = tmp_path / "slurm"
    work.mkdir()
    # The demo trains on CPU (training.gpus: 0); here every training job asks for one GPU, as on a GPU
    # cluster. `gpus` only sizes the job (it is not a training setting), so results must not change.
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["training"]["gpus"] = 1
    (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    args = ["--cores", "all", "--profile", "slurm", *FAST_STATUS]
    res = snakemake(work, *args, cwd=REPO, timeout=1800)
    log = res.stdout + res.stderr
    assert "SLURM run ID" in log, log[-2000:]  # the slurm executor ran the jobs

    train_ids = _job_ids(work, "train") + _job_ids(work, "pretrain")
    assert len(train_ids) == len([j for j in planned_jobs(log) if j[0] in {"train", "pretrain"}]) > 0
    for job_id in train_ids:
        job = scontrol_job(job_id)
        assert "gpu:1" in job.get("TresPerJob", ""), f"training job {job_id} has no GPU request: {job}"
    for job_id in _job_ids(work, "harmonise"):
        assert "gpu" not in scontrol_job(job_id).get("TresPerJob", "")

    local = completed_demo(tmp_path / "local") / "results"
    remote = work / "results"
    for rel in _same_files(local, remote, "tables/*.csv") + _same_files(local, remote, "stats/**/metrics.csv"):
        assert (local / rel).read_text() == (remote / rel).read_text(), f"{rel} differs between local and SLURM"
    for rel in _same_files(local, remote, "runs/**/predictions.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(local / rel), pd.read_parquet(remote / rel), check_exact=True)

    again = snakemake(work, *args, cwd=REPO)
    assert planned_jobs(again.stdout + again.stderr) == []
