"""Helpers for the end-to-end tests (reruns, SLURM demo): a completed demo workspace and job lists.

A completed demo takes minutes on two cores, so a CI run that already ran it can hand it over:
``CXRBENCH_DEMO_WORKDIR=<folder>`` (a working directory holding config.yaml, results/ and .snakemake/
of a finished `snakemake --cores all` run of the demo) is copied instead of being recomputed.
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


def completed_demo(dest: Path) -> Path:
    """A finished demo workspace at ``dest``, copied from $CXRBENCH_DEMO_WORKDIR or from a demo this test
    process ran once (the first caller pays for it; later callers get a copy)."""
    global _COMPUTED
    given = os.environ.get("CXRBENCH_DEMO_WORKDIR")
    if given:
        src = Path(given)
        if not (src / "config.yaml").is_file() or not (src / "results").is_dir():
            raise AssertionError(f"CXRBENCH_DEMO_WORKDIR={given} holds no finished demo (config.yaml, results/)")
    else:
        if _COMPUTED is None:
            work = Path(tempfile.mkdtemp(prefix="cxrbench-demo-"))
            shutil.copy(REPO / "config.yaml", work / "config.yaml")
            snakemake(work, "--cores", "all")
            _COMPUTED = work
        src = _COMPUTED
    shutil.copytree(src, dest, symlinks=True)  # copy2 keeps mtimes, so the copy is up to date
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
