"""``cxrbench shard-plan``: labels.parquet -> shards.parquet + per-shard membership files."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from cxrbench.config import parse_settings
from cxrbench.preprocess.shards import plan_shards, write_memberships

_logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--settings", required=True, help='JSON: {"shard_size": int}')
    parser.add_argument("--labels", required=True, type=Path, help="labels.parquet (image_id, source_path)")
    parser.add_argument("--out", required=True, type=Path, help="shards.parquet to write")
    parser.add_argument("--members-dir", required=True, type=Path, help="folder of shard-<k>.tsv membership files")


def run(args: argparse.Namespace) -> int:
    settings = parse_settings(args.settings)
    labels = pd.read_parquet(args.labels, columns=["image_id", "source_path"])
    try:
        plan = plan_shards(labels, shard_size=int(settings["shard_size"]))
    except ValueError as exc:
        raise SystemExit(f"{args.labels}: {exc}") from None
    counts = write_memberships(plan, args.members_dir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plan.to_parquet(args.out, index=False)
    _logger.info(
        "%d images in %d shards; membership files written %d, unchanged %d, removed %d",
        len(plan), plan["shard"].nunique(), counts["written"], counts["unchanged"], counts["removed"],
    )
    return 0
