"""``cxrbench external``: the external-validation matrix, its paired tests, the generalisation gap and figures.

Reads every ``cxrbench external-predict`` folder, every run's own ``predictions.parquet`` (the diagonal) and the
stats folder of each (test dataset, grid cell) for its bootstrap indices; writes the tables and figures named by
``external.table_names`` / ``external.figure_names`` (docs/outputs.md, "External validation").
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numba

from cxrbench.config import ConfigError, parse_settings
from cxrbench.evaluation.external import (
    AXES,
    ExternalRun,
    external_matrix,
    figure_names,
    in_domain_run,
    label_overlap,
    parse_cell_key,
    parse_run_key,
    read_cell_stats,
    read_external,
    table_names,
)
from cxrbench.evaluation.grid import GridError, contrasts_from_settings
from cxrbench.evaluation.outputs import figure_files
from cxrbench.evaluation.predictions import PredictionError
from cxrbench.training.data import DataError

_logger = logging.getLogger(__name__)

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--settings", required=True, help="JSON: evaluation settings, inits, pretrain_datasets and "
                   "contrasts ([[a, b], ...], default every init against evaluation.reference_init)")
    p.add_argument("--labels", action="append", required=True, metavar="DATASET=PATH",
                   help="a dataset's labels.parquet; repeat once per dataset, in config order (matrix order)")
    p.add_argument("--in-domain", action="append", required=True, metavar="RUNKEY=PATH",
                   help="a run's own predictions.parquet, keyed by RunKey.relpath(); repeat once per run")
    p.add_argument("--external", action="append", default=[], metavar="DIR",
                   help="an external-predict output folder; repeat once per (run, test dataset)")
    p.add_argument("--stats", action="append", required=True, metavar="CELLKEY=DIR",
                   help="a cell's stats folder (bootstrap indices), keyed by CellKey.relpath(); repeat per cell")
    p.add_argument("--tables-dir", required=True, type=Path)
    p.add_argument("--figures-dir", required=True, type=Path)
    p.add_argument("--threads", type=int, default=1, help="threads for the bootstrap kernel")


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ConfigError(f"{flag} {item!r}: expected KEY=PATH")
        if key in out:
            raise ConfigError(f"{flag}: {key!r} given twice")
        out[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    """Entry point of the subcommand."""
    from cxrbench.evaluation.external_figures import (
        auroc_matrix_figure,
        delta_limit,
        delta_matrix_figure,
        gap_figure,
        panels_of,
    )
    from cxrbench.evaluation.figures import heatmap_scale, save_figure
    from cxrbench.training.data import read_labels_table

    try:
        settings = parse_settings(args.settings)
        inits = list(settings["inits"])
        contrasts = contrasts_from_settings(settings)
        pretrain = dict(settings.get("pretrain_datasets") or {})
        labels = {ds: read_labels_table(path)[1] for ds, path in _pairs(args.labels, "--labels").items()}
        datasets = list(labels)
        runs: list[ExternalRun] = [in_domain_run(parse_run_key(k), p)
                                   for k, p in _pairs(args.in_domain, "--in-domain").items()]
        runs += [r for r in (read_external(d) for d in args.external) if r is not None]
        stats = {parse_cell_key(k): read_cell_stats(d) for k, d in _pairs(args.stats, "--stats").items()}
        n_res = {s.indices.shape[0] for s in stats.values()}
        if len(n_res) != 1:  # the gap pairs resample b of one test set with resample b of another
            raise ConfigError(f"stats folders were bootstrapped with different n_resamples: {sorted(n_res)}")
        unknown = sorted(({r.test_dataset for r in runs} | {r.key.dataset for r in runs}) - set(datasets))
        if unknown:
            raise ConfigError(f"predictions on {unknown}, which have no --labels")
        numba.set_num_threads(max(1, min(args.threads, numba.config.NUMBA_NUM_THREADS)))
        out = external_matrix(runs, stats, inits=inits, evaluation=settings["evaluation"])
    except (ConfigError, DataError, PredictionError, GridError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    overlap = label_overlap(labels)
    tables = {"label_overlap": overlap, "external": out["external"], "external_tests": out["tests"],
              "external_gap": out["gap"]}
    if list(tables) != table_names():  # the names the rules declare are what is written
        raise RuntimeError(f"tables {list(tables)} differ from external.table_names {table_names()}")
    args.tables_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        frame.to_csv(args.tables_dir / f"{name}.csv", index=False, float_format="%.10g")

    external, tests = out["external"], out["tests"]
    shared_pairs = set(zip(overlap["dataset_a"], overlap["dataset_b"], strict=True))
    panels = panels_of(external)
    diag = external[external["in_domain"].astype(bool) & (external["level"] == "macro")]
    ran = {init: {(r.train_dataset, *(getattr(r, a) for a in AXES))
                  for r in diag[diag["init"] == init].itertuples(index=False)} for init in inits}
    scale = heatmap_scale(external[external["level"] == "macro"])
    limit = delta_limit(tests)
    alpha = float(settings["evaluation"]["alpha"])
    figures = {}
    for init in inits:
        figures[f"external_auroc_{init}"] = auroc_matrix_figure(
            external, init=init, datasets=datasets, scale=scale, shared_pairs=shared_pairs,
            pretrain_datasets=pretrain)
    for a, b in contrasts:
        figures[f"external_delta_{a}_vs_{b}"] = delta_matrix_figure(
            tests, init_a=a, init_b=b, datasets=datasets, panels=panels, limit=limit, alpha=alpha,
            shared_pairs=shared_pairs, ran=ran, pretrain_datasets=pretrain)
    figures["external_gap"] = gap_figure(out["gap"], inits=inits, datasets=datasets, panels=panels,
                                         pretrain_datasets=pretrain)
    if list(figures) != figure_names(inits, contrasts):
        raise RuntimeError(f"figures {list(figures)} differ from external.figure_names "
                           f"{figure_names(inits, contrasts)}")
    for name, fig in figures.items():
        save_figure(fig, figure_files(args.figures_dir, name))
    n_ext = int((~external["in_domain"].astype(bool) & (external["level"] == "macro")).sum())
    _logger.info("external validation: %d in-domain and %d external (run, test set) results; wrote %d tables to "
                 "%s and %d figures to %s", len(diag), n_ext, len(tables), args.tables_dir, len(figures),
                 args.figures_dir)
    return 0


