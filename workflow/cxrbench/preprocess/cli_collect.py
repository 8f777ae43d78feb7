"""``cxrbench collect-shards``: merge shard manifests, write rejected.parquet, enforce the rejection limit."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from cxrbench.config import parse_settings
from cxrbench.preprocess.runner import MANIFEST_COLUMNS, status_summary

_logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--settings", required=True, help='JSON: {"max_rejected_fraction": float}')
    parser.add_argument("--manifests", required=True, nargs="+", type=Path, help="shard-<k>.manifest.parquet files")
    parser.add_argument("--out", required=True, type=Path, help="manifest.parquet to write")
    parser.add_argument("--rejected", required=True, type=Path, help="rejected.parquet to write")


def collect(manifests: list[Path]) -> pd.DataFrame:
    """Concatenate shard manifests sorted by image id; duplicate ids or wrong columns are errors."""
    frames = []
    for path in manifests:
        frame = pd.read_parquet(path)
        if list(frame.columns) != MANIFEST_COLUMNS:
            raise ValueError(f"{path}: columns {list(frame.columns)} differ from {MANIFEST_COLUMNS}")
        frames.append(frame)
    manifest = pd.concat(frames, ignore_index=True).sort_values("image_id", kind="stable").reset_index(drop=True)
    dup = manifest["image_id"].duplicated()
    if dup.any():
        raise ValueError(f"image {manifest['image_id'][dup].iloc[0]!r} appears in more than one shard manifest")
    return manifest


def run(args: argparse.Namespace) -> int:
    settings = parse_settings(args.settings)
    limit = float(settings["max_rejected_fraction"])
    manifest = collect(args.manifests)
    rejected = manifest[manifest["status"] == "rejected"]
    fraction = len(rejected) / max(len(manifest), 1)
    summary = status_summary(manifest)
    _logger.info("%d images from %d shards; rejected %.4f (limit %.4f)\n%s",
                 len(manifest), len(args.manifests), fraction, limit, summary)
    if fraction > limit:
        examples = "\n".join(f"  {r.source_path}: {r.reason}" for r in rejected.head(10).itertuples())
        _logger.error(
            "rejected fraction %.4f exceeds preprocess.max_rejected_fraction %.4f\n%s\nfirst rejected:\n%s",
            fraction, limit, summary, examples,
        )
        return 1
    manifest.to_parquet(args.out, index=False)
    rejected.to_parquet(args.rejected, index=False)
    return 0
