"""``cxrbench cache``: pack a dataset's PNGs into one uint8 array per split (memory-mappable) + index."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import pandas as pd

from cxrbench.config import parse_settings
from cxrbench.preprocess.cache import SPLITS, build_split_cache, cache_paths

_logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--settings", required=True, help='JSON: {"size": int}')
    parser.add_argument("--labels", required=True, type=Path, help="labels.parquet (image_id, split)")
    parser.add_argument("--manifest", required=True, type=Path, help="preprocessing manifest.parquet")
    parser.add_argument("--out-dir", required=True, type=Path, help="cache folder (<split>.npy, <split>.index.parquet)")


def run(args: argparse.Namespace) -> int:
    size = int(parse_settings(args.settings)["size"])
    labels = pd.read_parquet(args.labels, columns=["image_id", "split"])
    manifest = pd.read_parquet(args.manifest, columns=["image_id", "output_path", "status"])
    png_dir = args.manifest.parent
    for split in SPLITS:
        start = time.perf_counter()
        npy, index = cache_paths(args.out_dir, split)
        try:
            n = build_split_cache(labels, manifest, split=split, png_dir=png_dir, size=size, out_npy=npy, out_index=index)
        except ValueError as exc:
            raise SystemExit(f"{args.labels} / {args.manifest}: {exc}") from None
        _logger.info("%s: %d images -> %s (%.1f s)", split, n, npy, time.perf_counter() - start)
    return 0
