"""``cxrbench preprocess``: convert one shard's source images to standard PNGs and write its manifest."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from cxrbench.config import parse_settings
from cxrbench.imaging.pipeline import Recipe
from cxrbench.preprocess.runner import process_shard, status_summary
from cxrbench.preprocess.shards import read_members

_logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--settings", required=True, help='JSON: {"mode", "size", "equalize", "reduced_resolution_decode"}')
    parser.add_argument("--members", required=True, type=Path, help="shard-<k>.tsv membership file")
    parser.add_argument("--root", required=True, type=Path, help="dataset root the source paths are relative to")
    parser.add_argument("--out-dir", required=True, type=Path, help="shard-<k>/ folder receiving the PNGs")
    parser.add_argument("--manifest", required=True, type=Path, help="shard-<k>.manifest.parquet to write")
    parser.add_argument("--threads", type=int, default=1, help="worker processes")


def recipe_from_settings(settings: dict) -> Recipe:
    """The shard rule's settings JSON as a :class:`Recipe`."""
    return Recipe(
        mode=settings["mode"],
        size=int(settings["size"]),
        equalize=bool(settings["equalize"]),
        reduced_decode=bool(settings["reduced_resolution_decode"]),
    )


def run(args: argparse.Namespace) -> int:
    recipe = recipe_from_settings(parse_settings(args.settings))
    members = read_members(args.members)
    _logger.info("%s: %d images, %s, %d worker(s)", args.members.name, len(members), recipe, args.threads)
    start = time.perf_counter()
    manifest = process_shard(members, root=args.root, out_dir=args.out_dir, recipe=recipe, workers=args.threads)
    tmp = args.manifest.with_name(f".{args.manifest.name}.tmp")
    manifest.to_parquet(tmp, index=False)
    tmp.replace(args.manifest)
    _logger.info("done in %.1f s\n%s", time.perf_counter() - start, status_summary(manifest))
    for reason in manifest.loc[manifest["status"] == "rejected", ["source_path", "reason"]].itertuples(index=False):
        _logger.warning("rejected %s: %s", reason.source_path, reason.reason)
    return 0
