"""``cxrbench demo-data``: write the synthetic demo datasets (rule ``demo_data``)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from cxrbench.demo import DATASETS, write_demo

__all__ = ["add_arguments", "run"]

_logger = logging.getLogger(__name__)
_KEYS = {"enabled", "root", "seed", "images_per_dataset"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of the subcommand."""
    parser.add_argument("--settings", required=True, help="JSON of the config's `demo` section")
    parser.add_argument("--out", required=True, type=Path, help="demo root folder to write")
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=None,
                        help="write only these datasets (default: all six)")
    parser.add_argument("--workers", type=int, default=1, help="processes writing datasets side by side")


def run(args: argparse.Namespace) -> int:
    """Parse the settings and write the datasets."""
    try:
        settings = json.loads(args.settings)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"demo-data: --settings is not valid JSON: {exc}") from None
    if not isinstance(settings, dict):
        raise SystemExit("demo-data: --settings must be a JSON object (the config's `demo` section)")
    missing = {"seed", "images_per_dataset"} - settings.keys()
    extra = settings.keys() - _KEYS
    if missing or extra:
        raise SystemExit(f"demo-data: --settings missing keys {sorted(missing)} / unknown keys {sorted(extra)}")
    # openjpeg logs one INFO line per encoded tile: thousands of lines of noise in the rule's log.
    logging.getLogger("openjpeg").setLevel(logging.WARNING)
    manifest = write_demo(args.out, seed=int(settings["seed"]),
                          images_per_dataset=int(settings["images_per_dataset"]), datasets=args.datasets,
                          workers=max(1, args.workers))
    _logger.info("wrote %d demo datasets under %s", len(manifest["datasets"]), args.out)
    return 0
