"""The SLURM and workstation profiles, and the SLURM job life cycle on a real scheduler.

Tests marked ``slurm`` need a controller (``.ci/slurm-up.sh`` starts one on loopback) and are skipped
with the reason otherwise. They run a toy workflow (tests/slurm/Snakefile) through the repository's
``slurm`` profile: a GPU request reaches sbatch, and a job that SLURM requeues (preemption) or that
Snakemake retries after a kill resumes from the checkpoint it left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent / "slurm"))
from cluster import (
    REPO,
    SLURM_PROFILE,
    STATUS_ARGS,
    read_jsonl,
    scontrol_job,
    slurm_ready,
    snakemake_cmd,
    time_limit_minutes,
    wait_for,
)

TOY = Path(__file__).parent / "slurm"


def _needs_slurm() -> None:
    ok, why = slurm_ready()
    if not ok:
        pytest.skip(why)


# --- profiles (no scheduler needed) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("00:10:00", 10), ("10:00", None), ("01:30:00", 90), ("1-00:00:00", 1440), ("2-03:04:30", 3064.5),
     ("UNLIMITED", None), ("Partition_Limit", None)],
)
def test_time_limit_is_read_as_scontrol_prints_it(text: str, minutes: float | None) -> None:
    if minutes is None:
        with pytest.raises(ValueError, match="not a"):
            time_limit_minutes(text)
    else:
        assert time_limit_minutes(text) == minutes


@pytest.mark.parametrize("name", ["slurm", "workstation"])
def test_profile_is_found_by_name_from_the_repository_root(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from snakemake.cli import get_profile_dir

    monkeypatch.chdir(REPO)
    found = get_profile_dir(name)
    assert found is not None, f"`--profile {name}` does not resolve from {REPO}"
    assert (REPO / found[1]).resolve() == (REPO / name / "profile.yaml").resolve()


def test_no_default_workflow_profile_overrides_the_cluster_profile() -> None:
    # Snakemake applies profiles/default implicitly and its default-resources replace the
    # cluster profile's (partition, account): there must be none.
    assert not (REPO / "profiles" / "default").exists()


def test_slurm_profile_parses_into_the_plugin_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from snakemake.cli import get_argument_parser

    monkeypatch.chdir(REPO)
    args = get_argument_parser(profiles=["slurm"]).parse_args(["--cores", "all"])
    assert args.executor == "slurm"
    assert args.slurm_status_command == "squeue"  # works without an accounting database
    assert args.slurm_requeue is True
    assert args.retries >= 1
    assert args.latency_wait >= 30
    # Site values are left to the user: a placeholder partition would make every submission fail.
    assert "slurm_partition" not in args.default_resources
    assert "slurm_account" not in args.default_resources


def test_workstation_profile_limits_concurrent_gpu_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    from snakemake.cli import get_argument_parser

    monkeypatch.chdir(REPO)
    args = get_argument_parser(profiles=["workstation"]).parse_args([])
    assert args.executor in (None, "local")
    assert args.resources["gpu"].value == 1
    assert args.retries >= 1


def test_profiles_document_every_key() -> None:
    # Every top-level key of the SLURM profile is commented on its line or right above it.
    lines = (SLURM_PROFILE / "profile.yaml").read_text().splitlines()
    keys = yaml.safe_load("\n".join(lines))
    for key in keys:
        idx = next(i for i, line in enumerate(lines) if line.startswith(f"{key}:"))
        assert "#" in lines[idx] or lines[idx - 1].lstrip().startswith("#"), f"profile key {key!r} is undocumented"


# --- a real scheduler ---------------------------------------------------------------------------


def _toy_workdir(tmp_path: Path) -> Path:
    work = tmp_path / "toy"
    work.mkdir()
    shutil.copy(TOY / "Snakefile", work / "Snakefile")
    shutil.copy(TOY / "resume_job.py", work / "resume_job.py")
    return work


@pytest.mark.slurm
def test_gpu_jobs_are_submitted_with_a_gpu_request(tmp_path: Path) -> None:
    _needs_slurm()
    work = _toy_workdir(tmp_path)
    res = subprocess.run(
        snakemake_cmd("--profile", str(SLURM_PROFILE), *STATUS_ARGS, "gpu.txt", "cpu.txt"),
        cwd=work,
        check=False,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    gpu = dict(kv.split("=", 1) for kv in (work / "gpu.txt").read_text().split())
    cpu = dict(kv.split("=", 1) for kv in (work / "cpu.txt").read_text().split())
    assert gpu["CUDA_VISIBLE_DEVICES"] == "0"  # SLURM bound the (dummy) GPU to the job
    assert cpu["CUDA_VISIBLE_DEVICES"] == "none"
    gpu_job, cpu_job = scontrol_job(gpu["SLURM_JOB_ID"]), scontrol_job(cpu["SLURM_JOB_ID"])
    assert "gpu:1" in gpu_job.get("TresPerJob", ""), gpu_job
    assert "gpu" not in cpu_job.get("TresPerJob", ""), cpu_job
    assert gpu_job["TimeLimit"] == "00:05:00"  # runtime=5 minutes from the rule
    assert gpu_job["Requeue"] == "1"  # the profile's slurm-requeue


def _start_resume_run(work: Path, epochs: int, pause: float) -> subprocess.Popen:
    log = open(work / "snakemake.out", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        snakemake_cmd(
            "--profile",
            str(SLURM_PROFILE),
            *STATUS_ARGS,
            "--config",
            f"epochs={epochs}",
            f"pause={pause}",
            "--",
            "resume/done.json",
        ),
        cwd=work,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _finish(proc: subprocess.Popen, work: Path, timeout: float = 240) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)  # lets Snakemake scancel its jobs
        proc.wait(timeout=60)
    out = (work / "snakemake.out").read_text()
    assert proc.returncode == 0, out[-4000:]
    return out


def _checkpoint_epoch(work: Path) -> int:
    ckpt = work / "resume" / "checkpoint.json"
    try:
        return json.loads(ckpt.read_text())["epoch"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def _toy_job_past_epoch_2(tmp_path: Path) -> tuple[Path, subprocess.Popen, str]:
    """The 6-epoch toy job running under SLURM with 2 epochs checkpointed: (workdir, Snakemake, job id)."""
    _needs_slurm()
    work = _toy_workdir(tmp_path)
    proc = _start_resume_run(work, epochs=6, pause=1.5)
    wait_for(lambda: _checkpoint_epoch(work) >= 2, timeout=120, what="epoch 2 of the toy job")
    job_id = read_jsonl(work / "resume" / "starts.jsonl")[0]["slurm_job_id"]
    return work, proc, job_id


@pytest.mark.slurm
def test_requeued_job_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    """Preemption: SLURM requeues the running job (same job id); it continues where it stopped."""
    work, proc, job_id = _toy_job_past_epoch_2(tmp_path)
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    # SLURM holds a requeued job for ~2 minutes before it is eligible again; skip that wait.
    wait_for(lambda: scontrol_job(job_id)["JobState"] == "PENDING", timeout=60, what="the requeued job to pend")
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
    _finish(proc, work)
    starts = read_jsonl(work / "resume" / "starts.jsonl")
    assert len(starts) == 2, starts
    assert starts[0]["from_epoch"] == 1
    assert starts[1]["from_epoch"] >= 3, starts  # resumed, not restarted
    assert starts[1]["slurm_job_id"] == job_id  # the same job, requeued by SLURM (not a Snakemake retry)
    assert scontrol_job(job_id)["Restarts"] == "1"
    assert json.loads((work / "resume" / "done.json").read_text())["ran"] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slurm
def test_killed_job_is_retried_with_more_resources_and_resumes(tmp_path: Path) -> None:
    """A job SLURM cancels (time limit, admin, node loss) fails; Snakemake's retry resumes it."""
    work, proc, job_id = _toy_job_past_epoch_2(tmp_path)
    subprocess.run(["scancel", job_id], check=True)
    _finish(proc, work)
    starts = read_jsonl(work / "resume" / "starts.jsonl")
    assert len(starts) == 2, starts
    assert starts[1]["slurm_job_id"] != job_id  # a new submission (Snakemake's retry)
    assert starts[1]["from_epoch"] >= 3, starts
    assert (int(starts[0]["mem_mb"]), int(starts[1]["mem_mb"])) == (400, 800)  # attempt-scaled
    assert json.loads((work / "resume" / "done.json").read_text())["ran"] == [1, 2, 3, 4, 5, 6]
