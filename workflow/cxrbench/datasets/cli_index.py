"""``cxrbench index``: read a dataset's native label files into ``index.parquet``."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from cxrbench.config import ConfigError, parse_settings
from cxrbench.datasets import DatasetFormatError, build_index, write_index
from cxrbench.datasets.schema import IndexSchemaError

_logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--settings", required=True, help="stage settings JSON (dataset_settings() in common.smk)")
    parser.add_argument("--out", required=True, type=Path, help="index.parquet to write")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    try:
        settings = parse_settings(args.settings)
        df = build_index(settings)
        write_index(df, args.out)
    except (ConfigError, DatasetFormatError, IndexSchemaError) as exc:
        _logger.error("%s", exc)
        return 2
    _logger.info("wrote %s (%d rows) in %.2f s", args.out, len(df), time.perf_counter() - start)
    return 0
