"""Stable assignment of a dataset's images to preprocessing shards, and per-shard membership files.

Shard of an image = ``blake2b(image_id) mod K`` with ``K`` the smallest power of two such that the mean
shard holds at most ``shard_size`` images. Adding or removing an image therefore moves no other image,
and ``K`` only changes when the image count crosses ``shard_size * 2^m`` (then every shard reruns once).
Each shard's membership file is rewritten only when its content changes, so Snakemake (which compares
modification times) reruns exactly the shards whose membership changed.

Changes of the source images themselves are seen through :func:`source_fingerprint`, a short hash over
``(source_path, st_size, st_mtime_ns)`` of a shard's members that the shard rule passes as a ``params``
value: Snakemake's params rerun trigger then reruns exactly the shards whose fingerprint changed, at one
``stat`` per image instead of one declared input per image (docs/preprocessing.md, "Incremental behaviour").
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

_logger = logging.getLogger(__name__)

__all__ = [
    "MISSING",
    "assign_shards",
    "fingerprint_records",
    "plan_shards",
    "read_members",
    "shard_count",
    "source_fingerprint",
    "stat_sources",
    "write_memberships",
]

PLAN_COLUMNS = ["image_id", "source_path", "shard"]
MEMBERS_HEADER = "image_id\tsource_path"
# Recorded instead of (size, mtime) for a source that cannot be stat'ed: the shard job quarantines it, and
# the fingerprint changes again when the file appears.
MISSING = "missing"


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
    blank = labels["image_id"].isna() | labels["source_path"].isna()
    blank |= (labels["image_id"].astype(str) == "") | (labels["source_path"].astype(str) == "")
    if blank.any():
        row = int(np.flatnonzero(blank)[0])
        raise ValueError(f"labels row {row}: image_id or source_path is null or empty")
    dup = labels["image_id"].duplicated()
    if dup.any():
        raise ValueError(f"labels image_id {labels['image_id'][dup].iloc[0]!r} occurs more than once")
    plan = labels[["image_id", "source_path"]].astype(str).reset_index(drop=True)
    plan["shard"] = assign_shards(plan["image_id"], shard_count(len(plan), shard_size))
    return plan.sort_values(["shard", "image_id"], kind="stable").reset_index(drop=True)


def _members_text(group: pd.DataFrame) -> str:
    rows = group.sort_values("image_id")
    return MEMBERS_HEADER + "\n" + "".join(f"{i}\t{p}\n" for i, p in zip(rows["image_id"], rows["source_path"]))


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


def _parse_members(path: str | Path) -> tuple[list[str], list[str]]:
    """(image ids, source paths) of a membership file; a wrong header or row raises naming file and line."""
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    if lines[0] != MEMBERS_HEADER:
        raise ValueError(f"{path}: line 1 must be the header {MEMBERS_HEADER!r}, got {lines[0][:80]!r}")
    if lines[-1] != "":
        raise ValueError(f"{path}: does not end with a newline (truncated write?)")
    ids, sources = [], []
    for number, line in enumerate(lines[1:-1], start=2):
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0] or not fields[1]:
            raise ValueError(f"{path}: line {number} must be '<image_id><TAB><source_path>', got {line[:80]!r}")
        ids.append(fields[0])
        sources.append(fields[1])
    return ids, sources


def read_members(path: str | Path) -> pd.DataFrame:
    """Read a membership file as (image_id, source_path) strings."""
    ids, sources = _parse_members(path)
    return pd.DataFrame({"image_id": pd.Series(ids, dtype=object), "source_path": pd.Series(sources, dtype=object)})


def stat_sources(root: str | Path, source_paths: list[str]) -> list[tuple[int, int] | None]:
    """``(st_size, st_mtime_ns)`` of each ``root/source_path`` (symlinks followed), ``None`` where stat fails.

    Plain ``os.stat`` per file: measured faster than ``os.scandir`` per directory (whose entries still need a
    ``stat`` call each on Linux and which lists non-members too); see bench/shard_fingerprint.py.
    """
    prefix = os.path.join(os.fspath(root), "")
    out: list[tuple[int, int] | None] = []
    for rel in source_paths:
        try:
            st = os.stat(prefix + rel)
        except OSError:  # missing, a broken link, an unreadable folder: the shard job quarantines it
            out.append(None)
        else:
            out.append((st.st_size, st.st_mtime_ns))
    return out


def fingerprint_records(source_paths: list[str], stats: list[tuple[int, int] | None]) -> str:
    """16-hex-digit blake2b over ``source_path, st_size, st_mtime_ns`` per member (``None`` -> :data:`MISSING`)."""
    if len(source_paths) != len(stats):
        raise ValueError(f"{len(source_paths)} source paths but {len(stats)} stat results")
    text = "".join(
        f"{rel}\t{MISSING}\n" if st is None else f"{rel}\t{st[0]}\t{st[1]}\n" for rel, st in zip(source_paths, stats)
    )
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


# (membership file, root) -> ((st_mtime_ns, st_size, st_ino) of the membership file, fingerprint). Snakemake
# evaluates a job's params more than once per invocation (e.g. before and after the plan checkpoint), so each
# shard costs one pass; a rewritten membership file (os.replace: new inode) is read again.
_FINGERPRINTS: dict[tuple[str, str], tuple[tuple[int, int, int], str]] = {}


def source_fingerprint(members: str | Path, *, root: str | Path) -> str:
    """Fingerprint of the current state of one shard's source images (cached per membership file version)."""
    st = os.stat(members)
    version = (st.st_mtime_ns, st.st_size, st.st_ino)
    key = (os.fspath(members), os.fspath(root))
    cached = _FINGERPRINTS.get(key)
    if cached is not None and cached[0] == version:
        return cached[1]
    _, sources = _parse_members(members)
    value = fingerprint_records(sources, stat_sources(root, sources))
    _FINGERPRINTS[key] = (version, value)
    return value
