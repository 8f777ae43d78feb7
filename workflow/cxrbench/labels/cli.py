"""``cxrbench harmonise``: index.parquet -> labels.parquet plus labels.summary.{csv,md}."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from cxrbench.config import ConfigError, parse_settings
from cxrbench.datasets import DatasetFormatError, read_index
from cxrbench.labels.harmonise import HarmoniseError, existing_files, harmonise
from cxrbench.labels.schema import LabelsSchemaError, write_labels
from cxrbench.labels.splits import SplitError
from cxrbench.labels.summary import summary_markdown, summary_table

_logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--settings", required=True, help="stage settings JSON (dataset_settings() in common.smk)")
    parser.add_argument("--index", required=True, type=Path, help="index.parquet from `cxrbench index`")
    parser.add_argument("--out", required=True, type=Path,
                        help="labels.parquet to write; labels.summary.csv/.md are written next to it")


def summary_paths(out: Path) -> tuple[Path, Path]:
    """``labels.summary.csv`` / ``.md`` beside ``labels.parquet`` (as Layout.labels_summary names them)."""
    return out.with_name(f"{out.stem}.summary.csv"), out.with_name(f"{out.stem}.summary.md")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    try:
        settings = parse_settings(args.settings)
        index = read_index(args.index)
        root = Path(settings["dataset"]["root"])
        result = harmonise(index, settings, exists=lambda paths: existing_files(root, paths))
        write_labels(result.labels, result.label_set, args.out)
    except (ConfigError, DatasetFormatError, HarmoniseError, LabelsSchemaError, SplitError, ValueError) as exc:
        _logger.error("%s", exc)
        return 2
    table = summary_table(result)
    csv_path, md_path = summary_paths(args.out)
    table.to_csv(csv_path, index=False)
    md_path.write_text(summary_markdown(result, table, title=settings["name"]), encoding="utf-8")
    _logger.info("wrote %s (%d rows, %d labels) in %.2f s", args.out, len(result.labels), len(result.label_set),
                 time.perf_counter() - start)
    return 0
