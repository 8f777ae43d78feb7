"""A config without `grid` gives the same numbers in the same tables as before the experiment grid existed.

tests/data/grid-regression/config.yaml is a small end-to-end workflow (three demo datasets at 32 px, random
initialisation vs the MIMIC chain in the study's per-target transfer, one fine-tuning epoch, 50 bootstrap
resamples). Its expected tables, tests/data/grid-regression/tables/*.csv, were produced by the code *before* the
grid (main at commit 2aad859, `snakemake --configfile config.yaml -c2` in an empty folder; tests/data/README.md).
This test runs the same workflow with the current code (runs, stats and preprocessing now live in the grid's
per-size and per-cell folders) and requires every table to be byte-identical, and no grid output to appear.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "slurm"))
from demo_run import snakemake

pytestmark = pytest.mark.slow

DATA = Path(__file__).parent / "data" / "grid-regression"


def test_config_without_grid_reproduces_the_tables_from_before_the_grid(tmp_path: Path) -> None:
    shutil.copy(DATA / "config.yaml", tmp_path / "config.yaml")
    snakemake(tmp_path, "--configfile", str(tmp_path / "config.yaml"), "--cores", "2", timeout=1800)
    tables = tmp_path / "results" / "tables"
    expected = sorted(p.name for p in (DATA / "tables").glob("*.csv"))
    assert sorted(p.name for p in tables.glob("*.csv")) == expected
    for name in expected:
        assert (tables / name).read_bytes() == (DATA / "tables" / name).read_bytes(), name
    assert (tmp_path / "results" / "runs" / "mimic_sl" / "vindr" / "32px" / "finetune" / "frac-1" / "seed-0").is_dir()
    assert not list((tmp_path / "results" / "figures").glob("grid_*"))  # one cell per dataset: no grid job
