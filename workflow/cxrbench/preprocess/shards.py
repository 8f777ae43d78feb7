"""Stable assignment of a dataset's images to preprocessing shards, and per-shard membership files.

Shard of an image = ``blake2b(image_id) mod K`` with ``K`` the smallest power of two such that the mean
shard holds at most ``shard_size`` images. Adding or removing an image therefore moves no other image,
and ``K`` only changes when the image count crosses ``shard_size * 2^m`` (then every shard reruns once).
Each shard's membership file is rewritten only when its content changes, so Snakemake (which compares
modification times) reruns exactly the shards whose membership changed.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.paths import Layout

_logger = logging.getLogger(__name__)

__all__ = ["assign_shards", "members_path", "plan_shards", "read_members", "shard_count", "write_memberships"]

PLAN_COLUMNS = ["image_id", "source_path", "shard"]


def shard_count(n_images: int, shard_size: int) -> int:
    """Smallest power of two K with ceil(n / K) <= shard_size (at least 1)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    need = max(1, math.ceil(n_images / shard_size))
    return 1 << (need - 1).bit_length()


def assign_shards(image_ids: pd.Series, n_shards: int) -> np.ndarray:
    """Shard index per image id: a platform- and process-independent hash, not Python's ``hash``."""
    digest = [int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "big") for i in image_ids]
    return (np.array(digest, dtype=np.uint64) % np.uint64(n_shards)).astype(np.int64)


def plan_shards(labels: pd.DataFrame, *, shard_size: int) -> pd.DataFrame:
    """(image_id, source_path, shard) for every row of a labels table, sorted by shard then image id."""
    missing = {"image_id", "source_path"} - set(labels.columns)
    if missing:
        raise ValueError(f"labels table lacks column(s) {sorted(missing)}")
    if labels["image_id"].isna().any() or labels["source_path"].isna().any():
        row = int(np.flatnonzero(labels["image_id"].isna() | labels["source_path"].isna())[0])
        raise ValueError(f"labels row {row}: image_id or source_path is null")
    dup = labels["image_id"].duplicated()
    if dup.any():
        raise ValueError(f"labels image_id {labels['image_id'][dup].iloc[0]!r} occurs more than once")
    plan = labels[["image_id", "source_path"]].astype(str).reset_index(drop=True)
    plan["shard"] = assign_shards(plan["image_id"], shard_count(len(plan), shard_size))
    return plan.sort_values(["shard", "image_id"], kind="stable").reset_index(drop=True)


def members_path(layout: Layout, ds: str, variant: str, shard: int | str) -> Path:
    """Membership file of one shard (kept next to the shard outputs, outside any rule's outputs)."""
    return layout.png_dir(ds, variant) / "members" / f"shard-{shard}.tsv"


def _members_text(group: pd.DataFrame) -> str:
    rows = group.sort_values("image_id")
    return "image_id\tsource_path\n" + "".join(f"{i}\t{p}\n" for i, p in zip(rows["image_id"], rows["source_path"]))


def write_memberships(plan: pd.DataFrame, members_dir: Path) -> dict[str, int]:
    """Write ``shard-<k>.tsv`` per shard only where its content changed; delete files of vanished shards."""
    for col in ("image_id", "source_path"):
        bad = plan[col].str.contains("[\t\n\r]", regex=True)
        if bad.any():
            raise ValueError(f"{col} of image {plan['image_id'][bad].iloc[0]!r} contains a tab or newline")
    members_dir.mkdir(parents=True, exist_ok=True)
    counts = {"written": 0, "unchanged": 0, "removed": 0}
    keep = set()
    for shard, group in plan.groupby("shard", sort=True):
        path = members_dir / f"shard-{shard}.tsv"
        keep.add(path.name)
        text = _members_text(group)
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            counts["unchanged"] += 1
            continue
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        counts["written"] += 1
    for stale in members_dir.glob("shard-*.tsv"):
        if stale.name not in keep:
            stale.unlink()
            counts["removed"] += 1
    return counts


def read_members(path: str | Path) -> pd.DataFrame:
    """Read a membership file as (image_id, source_path) strings."""
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
