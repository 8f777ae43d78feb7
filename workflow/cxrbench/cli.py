"""The ``cxrbench`` command line: one subcommand per stage, each a thin wrapper of one typed function.

Every Snakemake rule calls exactly one of these subcommands, so each stage can also be run and tested
without Snakemake. Subcommand modules are imported lazily (torch is slow to import).

A subcommand module defines ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from cxrbench import __version__
from cxrbench.log import setup_logging

_logger = logging.getLogger(__name__)

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "validate-config": ("cxrbench.config_cli", "validate a config file and print it with defaults filled"),
    "demo-data": ("cxrbench.demo.cli", "write the synthetic demo datasets in their native layouts"),
    "index": ("cxrbench.datasets.cli_index", "read a dataset's native label files into index.parquet"),
    "harmonise": ("cxrbench.labels.cli", "canonical findings, policies, views and splits -> labels.parquet"),
    "fractions": ("cxrbench.labels.cli_fractions", "nested, patient-grouped label-fraction subsets of the train split"),
    "shard-plan": ("cxrbench.preprocess.cli_plan", "assign a dataset's images to preprocessing shards"),
    "preprocess": ("cxrbench.preprocess.cli_shard", "convert one shard of images to standard PNGs"),
    "collect-shards": ("cxrbench.preprocess.cli_collect", "merge shard manifests, enforce the rejection limit"),
    "cache": ("cxrbench.preprocess.cli_cache", "pack a dataset's PNGs into uint8 arrays per split"),
    "weights": ("cxrbench.models.cli", "check or fetch pretrained weights for the offline cache"),
    "features": ("cxrbench.training.features", "cache the frozen backbone's features for linear-probe runs"),
    "train": ("cxrbench.training.cli", "fine-tune one (initialisation, dataset) run"),
    "evaluate": ("cxrbench.evaluation.cli_evaluate", "metrics and paired bootstrap for one dataset"),
    "aggregate": ("cxrbench.evaluation.cli_aggregate", "tests, tables, figures and output docs over all datasets"),
    "external-predict": ("cxrbench.evaluation.cli_external_predict", "predict another dataset's test split with a run"),
    "external": ("cxrbench.evaluation.cli_external", "external-validation matrix, paired tests, gap and figures"),
    "grid": ("cxrbench.evaluation.cli_grid", "experiment-grid tables and figures: per seed and seed-pooled"),
    "archive": ("cxrbench.archive", "pack results for publication"),
    "verify": ("cxrbench.archive_verify", "re-check an unpacked archive's checksums"),
    "plan": ("cxrbench.plan.cli", "device-hours, CPU-hours, disk and memory of a config before submission"),
}


def build_parser() -> argparse.ArgumentParser:
    # `@FILE` reads arguments from FILE, one per line (a rule whose argument list is too long for one command).
    parser = argparse.ArgumentParser(
        prog="cxrbench", description=__doc__.splitlines()[0], fromfile_prefix_chars="@"
    )
    parser.add_argument("--version", action="version", version=f"cxrbench {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="<stage>", required=True)
    argv = sys.argv[1:]
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        # Only the chosen subcommand's module is imported (keeps `cxrbench --help` fast).
        if name in argv:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    args = build_parser().parse_args()
    setup_logging(args.verbose)
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
