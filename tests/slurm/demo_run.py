"""Helpers for the end-to-end tests (reruns, SLURM demo): a completed demo workspace and job lists.

A completed demo takes minutes on two cores, so it runs once per test process, and
``CXRBENCH_DEMO_WORKDIR=<folder>`` hands it from one process to the next (see ``completed_demo``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
JOB_HEADER = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")


def snakemake(
    workdir: Path, *args: str, timeout: float = 1800, check: bool = True, cwd: Path = REPO
) -> subprocess.CompletedProcess:
    """Run the repository's workflow in ``workdir`` (Snakemake started from ``cwd``)."""
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), *args],
        cwd=cwd,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and res.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
        )
    return res


_COMPUTED: Path | None = None  # the demo computed by this test process, shared by every caller


def _finished(work: Path) -> bool:
    return (work / "config.yaml").is_file() and (work / "results" / "README.md").is_file()


def completed_demo(dest: Path) -> Path:
    """A finished demo workspace at ``dest`` (a copy; callers may change it).

    The demo runs once per test process. ``CXRBENCH_DEMO_WORKDIR=<folder>`` shares it between
    processes: a folder holding a finished demo is copied; an empty or absent one is where the demo is
    computed, for the next process to reuse (`.ci/run` uses this for its SLURM stage).
    """
    global _COMPUTED
    given = os.environ.get("CXRBENCH_DEMO_WORKDIR")
    if _COMPUTED is None:
        if given and _finished(Path(given)):
            _COMPUTED = Path(given)
        else:
            work = Path(given) if given else Path(tempfile.mkdtemp(prefix="cxrbench-demo-"))
            if work.exists() and any(work.iterdir()):
                raise AssertionError(f"CXRBENCH_DEMO_WORKDIR={given} holds no finished demo and is not empty")
            work.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / "config.yaml", work / "config.yaml")
            snakemake(work, "--cores", "all")
            _COMPUTED = work
    shutil.copytree(_COMPUTED, dest, symlinks=True)  # copy2 keeps mtimes, so the copy is up to date
    shutil.rmtree(dest / ".snakemake" / "locks", ignore_errors=True)
    return dest


def planned_jobs(output: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, wildcards) of every job in a Snakemake log (dry run or real run), in log order.

    The target pseudo-rule ``all`` (which runs nothing) is left out.
    """
    jobs: list[tuple[str, dict[str, str]]] = []
    lines = output.splitlines()
    for i, line in enumerate(lines):
        m = JOB_HEADER.match(line.strip()) if not line.startswith(" ") else None
        if not m or m.group(1) == "all":
            continue
        wildcards: dict[str, str] = {}
        for follow in lines[i + 1 : i + 12]:
            if not follow.startswith("    "):
                break
            if follow.strip().startswith("wildcards:"):
                for pair in follow.split(":", 1)[1].split(","):
                    key, _, value = pair.strip().partition("=")
                    wildcards[key] = value
        jobs.append((m.group(1), wildcards))
    return jobs
