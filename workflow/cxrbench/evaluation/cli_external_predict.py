"""``cxrbench external-predict``: predict another dataset's test split with a trained run (external validation).

Reads the run folder (``best.pt``, ``run.json``, ``predictions.parquet`` for A's validation thresholds) and
dataset B's ``labels.parquet``, preprocessing manifest and (optionally) cache; writes ``predictions.parquet``
(run contract, split ``test``, the labels A and B share) and ``external.json`` into ``--out-dir``
(``cxrbench.evaluation.external``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cxrbench.config import ConfigError
from cxrbench.evaluation.external import parse_run_key, predict_external, write_external
from cxrbench.evaluation.predictions import PredictionError
from cxrbench.training.cli import add_device_arguments
from cxrbench.training.data import DataError

_logger = logging.getLogger(__name__)

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", required=True, type=Path, help="the training run (trained on dataset A)")
    p.add_argument("--key", required=True,
                   help="the run's key as RunKey.relpath(): <init>/<A>/<size>px/<regime>/frac-<f>/seed-<s>")
    p.add_argument("--labels", required=True, type=Path, help="dataset B's labels.parquet")
    p.add_argument("--manifest", required=True, type=Path, help="dataset B's png/<variant>/manifest.parquet")
    p.add_argument("--cache-dir", type=Path, help="dataset B's cache/<variant>/ folder; used when its files exist")
    p.add_argument("--out-dir", required=True, type=Path, help="writes predictions.parquet and external.json here")
    add_device_arguments(p)


def run(args: argparse.Namespace) -> int:
    """Entry point of the subcommand."""
    try:
        frame, meta = predict_external(
            args.run_dir, key=parse_run_key(args.key), labels_path=args.labels, manifest_path=args.manifest,
            cache_dir=args.cache_dir, device=args.device, num_workers=args.num_workers, threads=args.threads,
        )
    except (ConfigError, DataError, PredictionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_external(args.out_dir, frame, {**meta, "command": sys.argv})
    _logger.info("wrote %s", args.out_dir)
    return 0
