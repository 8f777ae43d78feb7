"""`--profile slurm` where there is no SLURM: one clear message before anything is submitted.

Runs without a controller: PATH is the test's own PATH with the SLURM commands left out (CI machines that
run the SLURM tests have them in /usr/bin beside everything else).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cxrbench.config import REPO_ROOT

pytestmark = pytest.mark.slow

SLURM_COMMANDS = {"sbatch", "srun", "salloc", "squeue", "sacct", "scontrol", "sinfo", "scancel"}


def test_slurm_profile_without_sbatch_stops_before_submitting(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for folder in reversed(os.environ["PATH"].split(os.pathsep)):  # earlier PATH entries win, as in a shell
        for tool in Path(folder).glob("*") if Path(folder).is_dir() else ():
            if tool.name not in SLURM_COMMANDS and os.access(tool, os.X_OK):
                (bin_dir / tool.name).unlink(missing_ok=True)
                (bin_dir / tool.name).symlink_to(tool)
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = {**os.environ, "PATH": str(bin_dir)}
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "results/demo-data/demo-manifest.json", "--profile", "slurm",
         "--directory", str(workdir), "--configfile", str(REPO_ROOT / "config.yaml")],
        check=False, capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "sbatch not found: this profile needs a SLURM login node" in out
    assert "Job submission failed" not in out and "sacct" not in out  # nothing was submitted
    assert not (workdir / "results").exists()
