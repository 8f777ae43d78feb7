"""The demo on two datasets through `snakemake --cores all --profile slurm` on a real SLURM scheduler.

Needs a controller with a GPU GRES node (``.ci/slurm-up.sh``); skipped with the reason otherwise.
Snakemake is started from the repository root so that ``--profile slurm`` resolves exactly as a user
types it. The config is the shipped demo restricted to `mimic` and `uka`: every kind of job still runs
(demo data, preprocessing, the MIMIC pre-training for UKA, three training runs, evaluation, tables), but
about a fifth of the jobs, each of which waits on the plugin's status polling. Checks that every training job was
submitted with a GPU request and the planned time limit, that its results equal those of the local demo
(computed here, or copied from $CXRBENCH_DEMO_WORKDIR) where they must, and that a second invocation through
the profile has nothing to do.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from cxrbench.config import validate_config
from cxrbench.models.registry import init_spec
from cxrbench.paths import Layout
from cxrbench.plan import planned_pretrain_resources, planned_resources
from cxrbench.runkey import CellKey, grid_runs
from cxrbench.training.settings import pretrain_jobs

sys.path.insert(0, str(Path(__file__).parent / "slurm"))
from cluster import REPO, scontrol_job, slurm_ready, time_limit_minutes
from demo_run import completed_demo, planned_jobs, snakemake

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

FAST_STATUS = ["--slurm-init-seconds-before-status-checks", "5", "--slurm-keep-successful-logs"]
DATASETS = ("mimic", "uka")


def _job_ids(workdir: Path, folder: str) -> list[str]:
    """SLURM job ids under the plugin's log folder ``folder`` (``rule_<rule>`` or one job's ``rule_<rule>/<wildcards>``),
    one per submission: the log of each is ``<job id>.log``."""
    logs = (workdir / ".snakemake" / "slurm_logs" / folder).glob("**/*.log")
    return sorted(p.stem for p in logs if re.fullmatch(r"\d+", p.stem))


def _planned_runtimes(config: dict) -> dict[str, int]:
    """Planned runtime (minutes) of every train and pretrain job, keyed by the folder the SLURM plugin writes its
    log to: ``rule_<rule>/<wildcard values joined by '_'>`` (snakemake_executor_plugin_slurm.utils.get_job_wildcards;
    the values in the order of the rule's output pattern). Plans from what is on disk in the working directory."""
    out = {}
    for key in grid_runs(config):
        out[f"rule_train/{'_'.join(key.wildcards().values())}"] = planned_resources(config, key)["runtime"]
    for init, target, size in pretrain_jobs(config):
        values = [init, init_spec(config, init).pretrain_dataset, str(size), Layout.pretrain_scope(target)]
        res = planned_pretrain_resources(config, init=init, target=target, size=size)
        out[f"rule_pretrain/{'_'.join(values)}"] = res["runtime"]
    return out


def test_demo_through_the_slurm_profile_equals_a_local_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ok, why = slurm_ready()
    if not ok:
        pytest.skip(why)
    work = tmp_path / "slurm"
    work.mkdir()
    # The demo trains on CPU (training.gpus: 0); here every training job asks for one GPU, as on a GPU
    # cluster. `gpus` only sizes the job (it is not a training setting), so results must not change. Datasets are
    # drawn, split and trained each from its own seed, so two of the six give the same files as in the full demo.
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["training"]["gpus"] = 1
    config["datasets"] = {name: config["datasets"][name] for name in DATASETS}
    (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    # The plan as the workflow makes it in `onstart`, before the first job: from the same (empty) folder.
    monkeypatch.chdir(work)
    planned = _planned_runtimes(validate_config(config))
    monkeypatch.chdir(REPO)
    assert sorted(k.split("/")[0] for k in planned) == ["rule_pretrain"] + ["rule_train"] * 3

    args = ["--cores", "all", "--profile", "slurm", *FAST_STATUS]
    res = snakemake(work, *args, cwd=REPO, timeout=1800)
    log = res.stdout + res.stderr
    assert "SLURM run ID" in log, log[-2000:]  # the slurm executor ran the jobs
    assert "Compute plan on cpu" in log  # the plan is printed as training starts

    train_ids = _job_ids(work, "rule_train") + _job_ids(work, "rule_pretrain")
    assert len(train_ids) == len([j for j in planned_jobs(log) if j[0] in {"train", "pretrain"}]) == len(planned)
    for job_id in train_ids:
        job = scontrol_job(job_id)
        assert "gpu:1" in job.get("TresPerJob", ""), f"training job {job_id} has no GPU request: {job}"
    for job_id in _job_ids(work, "rule_harmonise"):
        assert "gpu" not in scontrol_job(job_id).get("TresPerJob", "")
    # Each job ran once (a retry would ask for k times the time) with the time limit the plan gave its key.
    for folder, minutes in planned.items():
        ids = _job_ids(work, folder)
        assert len(ids) == 1, f"{folder}: expected one SLURM job, found {ids}"
        limit = scontrol_job(ids[0])["TimeLimit"]
        assert time_limit_minutes(limit) == minutes, f"{folder}: TimeLimit {limit}, planned {minutes} min"

    # Only the runs and cells of the two datasets are comparable: the tables (and the BH-adjusted p-values in
    # them) span every dataset of a run, six locally and two here, so they differ by design.
    local = completed_demo(tmp_path / "local") / "results"
    remote = work / "results"
    ran = sorted(p.relative_to(remote).as_posix() for d in ("runs", "pretrain")
                 for p in (remote / d).glob("**/predictions.parquet"))
    assert len(ran) == len(planned), ran  # three training runs and the pre-training for UKA
    for rel in ran:
        assert (local / rel).is_file(), f"{rel}: the local demo has no such run"
        pd.testing.assert_frame_equal(pd.read_parquet(local / rel), pd.read_parquet(remote / rel), check_exact=True)
    cell = Layout("").stats_dir(CellKey("uka", config["preprocess"]["size"])).as_posix()
    assert (local / cell / "metrics.csv").read_text() == (remote / cell / "metrics.csv").read_text()
    pd.testing.assert_frame_equal(
        pd.read_parquet(local / cell / "tests.parquet"), pd.read_parquet(remote / cell / "tests.parquet"),
        check_exact=True,
    )

    again = snakemake(work, *args, cwd=REPO)
    assert planned_jobs(again.stdout + again.stderr) == []
