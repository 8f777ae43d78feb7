"""``cxrbench fractions``: labels.parquet -> fractions.parquet (nested train subsets) + per-label counts CSV."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from cxrbench.labels.fractions import FractionError, fraction_counts, label_fraction_subsets, write_fraction_subsets
from cxrbench.labels.schema import LabelsSchemaError, read_labels
from cxrbench.runkey import format_fraction, parse_fraction

_logger = logging.getLogger(__name__)


def _fraction_list(text: str) -> list[float]:
    """``0.01,0.1,1`` -> [0.01, 0.1, 1.0]; argparse reports the ValueError of a value outside (0, 1]."""
    try:
        return [parse_fraction(item) for item in text.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", required=True, type=Path, help="labels.parquet from `cxrbench harmonise`")
    parser.add_argument("--fractions", required=True, type=_fraction_list,
                        help="comma-separated label fractions in (0, 1], e.g. 0.01,0.1,1 (1 is always added)")
    parser.add_argument("--seed", required=True, type=int, help="seed of the patient draw order")
    parser.add_argument("--out", required=True, type=Path,
                        help="fractions.parquet to write (image_id, patient_id, min_fraction; train images only)")
    parser.add_argument("--counts", required=True, type=Path,
                        help="CSV of per-fraction, per-label counts (fraction, label, n_images, n_patients, "
                             "n_pos, n_neg, n_missing)")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    try:
        labels, _ = read_labels(args.labels)
        subsets = label_fraction_subsets(labels, args.fractions, seed=args.seed)
        counts = fraction_counts(labels, subsets, fractions=args.fractions)
    except (FileNotFoundError, LabelsSchemaError) as exc:
        _logger.error("%s", exc)  # these already name the file
        return 2
    except FractionError as exc:
        _logger.error("%s: %s", args.labels, exc)
        return 2
    write_fraction_subsets(subsets, args.out, fractions=args.fractions, seed=args.seed)
    args.counts.parent.mkdir(parents=True, exist_ok=True)
    counts.to_csv(args.counts, index=False)
    n_train = len(subsets)
    for fraction, rows in counts.groupby("fraction", sort=True):
        rarest = rows.loc[rows["n_pos"].idxmin()]
        _logger.info("fraction %s: %d images (%.2f %% of %d train), %d patients; fewest positives %d (%s)",
                     format_fraction(fraction), rows["n_images"].iloc[0], 100 * rows["n_images"].iloc[0] / n_train,
                     n_train, rows["n_patients"].iloc[0], rarest["n_pos"], rarest["label"])
    _logger.info("wrote %s and %s in %.2f s", args.out, args.counts, time.perf_counter() - start)
    return 0
