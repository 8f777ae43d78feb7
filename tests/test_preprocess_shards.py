"""Stable shard plans, change-only membership files, source fingerprints, the cache, and incremental reruns."""

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
from cxrbench.preprocess import shards
from cxrbench.preprocess.cache import build_split_cache, open_cache
from cxrbench.preprocess.runner import process_shard
from cxrbench.preprocess.shards import (
    MISSING,
    fingerprint_records,
    plan_shards,
    read_members,
    shard_count,
    source_fingerprint,
    stat_sources,
    write_memberships,
)
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


def test_read_members_rejects_bad_files_naming_file_and_line(tmp_path: Path) -> None:
    good = tmp_path / "shard-0.tsv"
    write_memberships(plan_shards(_labels(3), shard_size=10), tmp_path)
    assert list(read_members(good)["image_id"]) == list(_labels(3)["image_id"])
    bad = tmp_path / "bad.tsv"
    bad.write_text("image_id\tsource_path\na\tb\nonly-one-field\n")
    with pytest.raises(ValueError, match=r"bad.tsv: line 3 must be"):
        read_members(bad)
    bad.write_text("id\tpath\na\tb\n")
    with pytest.raises(ValueError, match=r"bad.tsv: line 1 must be the header"):
        read_members(bad)
    bad.write_text("image_id\tsource_path\na\tb")
    with pytest.raises(ValueError, match="does not end with a newline"):
        read_members(bad)
    with pytest.raises(ValueError, match="labels row 1: image_id or source_path is null or empty"):
        plan_shards(pd.DataFrame({"image_id": ["a", "b"], "source_path": ["x", ""]}), shard_size=10)


def test_fingerprint_follows_size_mtime_and_presence(tmp_path: Path) -> None:
    rels = ["a/1.png", "a/2.png", "b/3.png"]
    for k, rel in enumerate(rels):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(b"x" * (k + 1))
    stats = stat_sources(tmp_path, rels + ["c/missing.png"])
    assert stats[:3] == [((tmp_path / r).stat().st_size, (tmp_path / r).stat().st_mtime_ns) for r in rels]
    assert stats[3] is None
    base = fingerprint_records(rels, stat_sources(tmp_path, rels))
    assert len(base) == 16 and base == fingerprint_records(rels, stat_sources(tmp_path, rels))

    st = (tmp_path / rels[1]).stat()
    os.utime(tmp_path / rels[1], ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # `touch`: mtime only, 1 ns later
    touched = fingerprint_records(rels, stat_sources(tmp_path, rels))
    os.utime(tmp_path / rels[1], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert touched != base and fingerprint_records(rels, stat_sources(tmp_path, rels)) == base

    (tmp_path / rels[2]).write_bytes(b"yyyy")  # size changes (and mtime)
    resized = fingerprint_records(rels, stat_sources(tmp_path, rels))
    (tmp_path / rels[2]).unlink()  # missing -> the sentinel, distinct from any stat
    gone = fingerprint_records(rels, stat_sources(tmp_path, rels))
    assert len({base, resized, gone}) == 3
    assert gone == fingerprint_records(rels, [stats[0], stats[1], None])
    assert MISSING == "missing"
    with pytest.raises(ValueError, match="2 source paths but 1 stat"):
        fingerprint_records(rels[:2], [None])


def test_source_fingerprint_is_cached_per_membership_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    labels = _labels(6)
    _write_pngs(tmp_path / "root", labels, size=4)
    members_dir = tmp_path / "members"
    write_memberships(plan_shards(labels, shard_size=10), members_dir)
    calls = []
    real = shards.stat_sources
    monkeypatch.setattr(shards, "stat_sources", lambda root, paths: calls.append(len(paths)) or real(root, paths))
    monkeypatch.setattr(shards, "_FINGERPRINTS", {})
    members = members_dir / "shard-0.tsv"
    first = source_fingerprint(members, root=tmp_path / "root")
    assert source_fingerprint(members, root=tmp_path / "root") == first and calls == [6]  # one pass per shard
    assert first == fingerprint_records(list(labels["source_path"]), real(tmp_path / "root", list(labels["source_path"])))
    write_memberships(plan_shards(labels.iloc[1:], shard_size=10), members_dir)  # rewritten: read again
    assert source_fingerprint(members, root=tmp_path / "root") != first and calls == [6, 5]


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


def _snakemake(workdir: Path) -> str:
    """Run the workflow; its output (one `rule ...:` block per executed job, with the rerun reason)."""
    exe = shutil.which("snakemake") or str(Path(os.sys.executable).parent / "snakemake")
    res = subprocess.run([exe, "--cores", "2", "all", "-s", "Snakefile"], cwd=workdir,
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout + res.stderr


def _outputs(workdir: Path) -> dict[str, int]:
    """mtime of every shard manifest, the collected manifest and the cache arrays."""
    png = workdir / "results" / "demo" / "png"
    files = [*png.rglob("shard-*.manifest.parquet"), *png.rglob("manifest.parquet"),
             *(workdir / "results" / "demo" / "cache").rglob("*.npy")]
    return {p.name: p.stat().st_mtime_ns for p in files}


def _rerun(before: dict[str, int], after: dict[str, int]) -> list[str]:
    return sorted(k for k in after if before.get(k) != after[k])


def _shard_of(workdir: Path, image_id: str) -> int:
    plan = pd.read_parquet(workdir / "results/demo/png/paper-16/shards.parquet")
    return int(plan.set_index("image_id").loc[image_id, "shard"])


DOWNSTREAM = ["manifest.parquet", "test.npy", "train.npy", "val.npy"]


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
        "preprocess": {"mode": "paper", "size": 16, "shard_size": 8, "threads": 1, "cache": True,
                       "max_rejected_fraction": 0.1},  # the last step quarantines 1 of 25 images
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "Snakefile").write_text(SNAKEFILE)

    _snakemake(tmp_path)
    first = _outputs(tmp_path)
    assert len([k for k in first if k.startswith("shard-")]) == 4 and "train.npy" in first

    # (d) A no-op rerun runs nothing.
    log = _snakemake(tmp_path)
    assert "Nothing to be done" in log and _outputs(tmp_path) == first

    # (a) A bare `touch` (same content) reruns exactly its shard, through the params trigger, plus collect
    #     and cache; the membership files are not inputs that changed.
    time.sleep(0.05)
    touched = labels["image_id"][5]
    subprocess.run(["touch", str(tmp_path / "data" / labels["source_path"][5])], check=True)
    log = _snakemake(tmp_path)
    second = _outputs(tmp_path)
    assert _rerun(first, second) == sorted([f"shard-{_shard_of(tmp_path, touched)}.manifest.parquet", *DOWNSTREAM])
    assert log.count("rule preprocess_shard:") == 1 and "Params have changed since last execution" in log

    # (b) A content change of an image of another shard reruns exactly that shard, with the new pixels.
    other = next(i for i in range(len(labels)) if _shard_of(tmp_path, labels["image_id"][i]) != _shard_of(tmp_path, touched))
    out_png = tmp_path / "results/demo/png/paper-16" / f"shard-{_shard_of(tmp_path, labels['image_id'][other])}"
    old_pixels = {p.name: np.asarray(Image.open(p)) for p in out_png.glob("*.png")}
    time.sleep(0.05)
    Image.fromarray(np.full((40, 48), 7, np.uint8) + np.eye(40, 48, dtype=np.uint8) * 200).save(
        tmp_path / "data" / labels["source_path"][other])
    _snakemake(tmp_path)
    third = _outputs(tmp_path)
    shard = _shard_of(tmp_path, labels["image_id"][other])
    assert _rerun(second, third) == sorted([f"shard-{shard}.manifest.parquet", *DOWNSTREAM])
    new_pixels = {p.name: np.asarray(Image.open(p)) for p in out_png.glob("*.png")}
    differ = [k for k in old_pixels if not np.array_equal(old_pixels[k], new_pixels[k])]
    assert differ == [f"{labels['image_id'][other]}.png"]

    # (c) Add one image: the plan reruns (shard count stays 4), only the new image's shard reruns.
    time.sleep(0.05)
    extra = _labels(1, start=24)
    _write_pngs(tmp_path / "data", extra)
    labels = pd.concat([labels, extra], ignore_index=True)
    labels.to_parquet(tmp_path / "results" / "demo" / "labels.parquet", index=False)
    _snakemake(tmp_path)
    fourth = _outputs(tmp_path)
    assert _rerun(third, fourth) == sorted([f"shard-{_shard_of(tmp_path, extra['image_id'][0])}.manifest.parquet",
                                            *DOWNSTREAM])

    # Rewrite labels.parquet with new splits but the same images: the plan and the cache rerun, no shard.
    time.sleep(0.05)
    labels["split"] = labels["split"].iloc[::-1].to_numpy()
    labels.to_parquet(tmp_path / "results" / "demo" / "labels.parquet", index=False)
    _snakemake(tmp_path)
    fifth = _outputs(tmp_path)
    assert _rerun(fourth, fifth) == ["test.npy", "train.npy", "val.npy"]
    assert (tmp_path / "results/demo/png/paper-16/shards.parquet").stat().st_mtime_ns > max(fourth.values())

    # Delete a source: its shard reruns (fingerprint sentinel) and quarantines it as missing_file.
    gone = labels["image_id"][0]
    os.remove(tmp_path / "data" / labels["source_path"][0])
    _snakemake(tmp_path)
    assert _rerun(fifth, _outputs(tmp_path)) == sorted([f"shard-{_shard_of(tmp_path, gone)}.manifest.parquet",
                                                         *DOWNSTREAM])
    rejected = pd.read_parquet(tmp_path / "results/demo/png/paper-16/rejected.parquet")
    assert list(rejected["image_id"]) == [gone] and rejected["reason"].iloc[0].startswith("missing_file")
