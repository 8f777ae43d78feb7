"""Helpers shared by the Snakemake benchmarks (bench/dag_scale.py, bench/shard_fingerprint.py).

Imported as ``from _common import ...``: a script run as ``python bench/<name>.py`` has bench/ on its path.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def scratch_dir(keep: Path | None, *, prefix: str) -> Iterator[Path]:
    """``keep`` (created by the caller's code, kept afterwards) or a temporary folder removed on exit."""
    tmp = Path(keep) if keep else Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield tmp
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def run_snakemake(options: Sequence[str], args: Sequence[str], *, cwd: Path | None = None) -> tuple[float, str]:
    """Run ``python -m snakemake <options> <args>``; (wall seconds, combined output).

    A failure exits the benchmark with the output tails, naming only ``args`` (the options are fixed per bench).
    """
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "snakemake", *options, *args],
                         cwd=cwd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"snakemake {' '.join(args)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return wall, res.stdout + res.stderr
