"""Stable shard plans, change-only membership files, the cache, and incremental reruns under Snakemake."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from cxrbench.imaging.pipeline import Recipe
from cxrbench.preprocess.cache import build_split_cache, open_cache
from cxrbench.preprocess.runner import process_shard
from cxrbench.preprocess.shards import plan_shards, read_members, shard_count, write_memberships
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _labels(n: int, start: int = 0) -> pd.DataFrame:
    ids = [f"{k:08d}_000" for k in range(start, start + n)]
    return pd.DataFrame({
        "image_id": ids,
        "source_path": [f"images/{i}.png" for i in ids],
        "split": [("train", "val", "test")[k % 3] for k in range(start, start + n)],
        "y_cardiomegaly": np.float32(0.0),
    })


def test_shard_count_is_power_of_two_and_assignment_stable() -> None:
    assert [shard_count(n, 100) for n in (0, 1, 100, 101, 200, 201, 800_000)] == [1, 1, 1, 2, 2, 4, 8192]
    base = plan_shards(_labels(1000), shard_size=100)
    more = plan_shards(_labels(1001), shard_size=100)  # one image added, same shard count (16)
    merged = base.merge(more, on="image_id", suffixes=("_a", "_b"))
    assert len(merged) == 1000 and (merged["shard_a"] == merged["shard_b"]).all()
    assert base["shard"].value_counts().max() < 2 * 100
    with pytest.raises(ValueError, match="occurs more than once"):
        plan_shards(pd.concat([_labels(3), _labels(1)]), shard_size=10)


def test_memberships_rewritten_only_when_changed(tmp_path: Path) -> None:
    plan = plan_shards(_labels(400), shard_size=100)
    counts = write_memberships(plan, tmp_path)
    assert counts == {"written": 4, "unchanged": 0, "removed": 0}
    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.tsv")}
    time.sleep(0.01)
    changed = plan_shards(_labels(400).iloc[1:], shard_size=100)  # drop one image
    assert write_memberships(changed, tmp_path) == {"written": 1, "unchanged": 3, "removed": 0}
    moved = [p.name for p in tmp_path.glob("*.tsv") if p.stat().st_mtime_ns != mtimes[p.name]]
    assert len(moved) == 1
    assert set(read_members(tmp_path / moved[0])["image_id"]) == set(
        changed.loc[changed["shard"] == int(moved[0][6:-4]), "image_id"]
    )


def _write_pngs(root: Path, labels: pd.DataFrame, size: int = 40) -> None:
    rng = np.random.default_rng(0)
    for rel in labels["source_path"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size + 8), dtype=np.uint8)).save(root / rel)


def test_cache_packs_ok_images_per_split(tmp_path: Path) -> None:
    labels = _labels(12)
    _write_pngs(tmp_path / "root", labels)
    os.remove(tmp_path / "root" / labels["source_path"][4])  # becomes a rejected (missing_file) row
    png_dir = tmp_path / "png"
    manifest = process_shard(labels, root=tmp_path / "root", out_dir=png_dir / "shard-0", recipe=Recipe("standard", 16))
    for split in ("train", "val", "test"):
        n = build_split_cache(labels, manifest, split=split, png_dir=png_dir, size=16,
                              out_npy=tmp_path / f"{split}.npy", out_index=tmp_path / f"{split}.index.parquet")
        arr, index = open_cache(tmp_path, split)
        assert arr.shape == (n, 16, 16) and arr.dtype == np.uint8 and list(index["row"]) == list(range(n))
        first = manifest.set_index("image_id").loc[index["image_id"].iloc[0], "output_path"]
        assert np.array_equal(arr[0], np.asarray(Image.open(png_dir / first)))
    assert "00000004_000" not in set(pd.read_parquet(tmp_path / "val.index.parquet")["image_id"])


# --- Snakemake: incremental reruns ------------------------------------------------------------------------

SNAKEFILE = f"""
configfile: "config.yaml"
include: "{REPO}/workflow/rules/common.smk"
include: "{REPO}/workflow/rules/preprocess.smk"

rule all:
    input: preprocess_targets()
"""


def _snakemake(workdir: Path) -> None:
    exe = shutil.which("snakemake") or str(Path(os.sys.executable).parent / "snakemake")
    res = subprocess.run([exe, "--cores", "2", "--quiet", "all", "-s", "Snakefile"], cwd=workdir,
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


def _manifest_mtimes(workdir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (workdir / "results" / "demo" / "png").rglob("shard-*.manifest.parquet")}


@pytest.mark.slow
def test_snakemake_reruns_only_the_touched_shard(tmp_path: Path) -> None:
    labels = _labels(24)
    _write_pngs(tmp_path / "data", labels)
    (tmp_path / "results" / "demo").mkdir(parents=True)
    labels.to_parquet(tmp_path / "results" / "demo" / "labels.parquet", index=False)
    config = {
        "results": "results",
        "datasets": {"demo": {"adapter": "chestxray14", "root": "data"}},
        "initialisations": {"random": {"model": "vit_tiny_patch16_224", "source": "none"}},
        "preprocess": {"mode": "paper", "size": 16, "shard_size": 8, "threads": 1, "cache": True},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "Snakefile").write_text(SNAKEFILE)

    _snakemake(tmp_path)
    first = _manifest_mtimes(tmp_path)
    assert len(first) == 4 and (tmp_path / "results/demo/cache/paper-16/train.npy").is_file()

    # 1. Change one source image: exactly its shard reruns. (Snakemake >= 9.18 also compares checksums of
    #    inputs with a newer mtime, so a bare `touch` without a content change reruns nothing.)
    time.sleep(0.05)
    changed = tmp_path / "data" / labels["source_path"][5]
    Image.fromarray(np.full((40, 48), 7, np.uint8) + np.eye(40, 48, dtype=np.uint8) * 200).save(changed)
    _snakemake(tmp_path)
    second = _manifest_mtimes(tmp_path)
    rerun = [k for k in first if second[k] != first[k]]
    plan = pd.read_parquet(tmp_path / "results/demo/png/paper-16/shards.parquet")
    shard = int(plan.set_index("image_id").loc[labels["image_id"][5], "shard"])
    assert rerun == [f"shard-{shard}.manifest.parquet"]

    # 2. Add one image: the plan reruns (shard count stays 4), only the new image's shard reruns.
    time.sleep(0.05)
    extra = _labels(1, start=24)
    _write_pngs(tmp_path / "data", extra)
    labels = pd.concat([labels, extra], ignore_index=True)
    labels.to_parquet(tmp_path / "results" / "demo" / "labels.parquet", index=False)
    _snakemake(tmp_path)
    after_add = _manifest_mtimes(tmp_path)
    plan = pd.read_parquet(tmp_path / "results/demo/png/paper-16/shards.parquet")
    new_shard = int(plan.set_index("image_id").loc[extra["image_id"][0], "shard"])
    assert [k for k in second if after_add[k] != second[k]] == [f"shard-{new_shard}.manifest.parquet"]
    second = after_add

    # 3. Rewrite labels.parquet with new splits but the same images: the plan reruns, no shard does.
    time.sleep(0.05)
    labels["split"] = labels["split"].iloc[::-1].to_numpy()
    labels.to_parquet(tmp_path / "results" / "demo" / "labels.parquet", index=False)
    _snakemake(tmp_path)
    third = _manifest_mtimes(tmp_path)
    assert third == second
    assert (tmp_path / "results/demo/png/paper-16/shards.parquet").stat().st_mtime_ns > max(second.values())
