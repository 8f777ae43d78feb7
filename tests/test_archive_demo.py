"""`snakemake archive` on the finished demo: the tarball verifies, holds the publication files and no image,
PNG or source label file, and no fake patient identifier from the demo DICOM headers."""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

import pytest
from tarfiles import extract_all

sys.path.insert(0, str(Path(__file__).parent / "slurm"))
from cxrbench.archive_verify import verify_archive
from demo_run import completed_demo, snakemake

pytestmark = pytest.mark.slow


def test_snakemake_archive_on_the_demo(tmp_path: Path) -> None:
    work = completed_demo(tmp_path / "work")
    snakemake(work, "--cores", "1", "archive")
    tarball = work / "results" / "archive" / "cxrbench-results.tar.gz"
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
        extract_all(tar, tmp_path / "unpacked")
    assert verify_archive(tmp_path / "unpacked") == []
    suffixes = {Path(n).suffix.lower() for n in names}
    assert not suffixes & {".png", ".jpg", ".jpeg", ".dcm", ".dicom"}
    assert all(Path(n).name == "bootstrap_indices.npy" for n in names if n.endswith(".npy"))  # no image cache
    assert not any(Path(n).name in {"index.parquet", "labels.parquet", "master_list.csv"} for n in names)
    assert any(n.endswith("ro-crate-metadata.json") for n in names)
    assert any("tables/auroc_main.csv" in n for n in names)
    identifiers = json.loads((work / "results" / "demo-data" / "demo-manifest.json").read_text())["identifiers"]
    values = [v for v in (identifiers.values() if isinstance(identifiers, dict) else identifiers)]
    flat = [str(x) for v in values for x in (v if isinstance(v, list) else [v]) if len(str(x)) >= 6]
    assert flat, "the demo manifest lists fake identifiers"
    blob = b"".join(p.read_bytes() for p in (tmp_path / "unpacked").rglob("*") if p.is_file() and p.suffix != ".pdf")
    leaked = [v for v in flat if v.encode() in blob]
    assert leaked == []
