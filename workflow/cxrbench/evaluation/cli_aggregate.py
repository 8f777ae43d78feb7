"""``cxrbench aggregate``: Benjamini-Hochberg over all datasets, tables, figures and the results README.

Reads only the stats folders written by ``cxrbench evaluate``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from cxrbench.config import ConfigError, parse_settings
from cxrbench.evaluation.comparisons import adjust_bh
from cxrbench.evaluation.figures import forest_figure, heatmap_figure, heatmap_scale, roc_figure, save_figure
from cxrbench.evaluation.outputs import (
    figure_files,
    figure_names,
    results_readme,
    stats_files,
    table_files,
    table_names,
)
from cxrbench.evaluation.tables import Table, main_table, overlap_table, per_label_table, tests_table, write_table

_logger = logging.getLogger(__name__)

__all__ = ["add_arguments", "aggregate", "pretrain_datasets", "reference_init", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--settings", required=True, help="JSON: evaluation settings, seed, inits, pipeline inits")
    p.add_argument("--stats", action="append", required=True, metavar="DATASET=DIR",
                   help="a dataset's stats folder; repeat once per dataset, in config order")
    p.add_argument("--tables-dir", required=True)
    p.add_argument("--figures-dir", required=True)
    p.add_argument("--readme", required=True, help="the generated README.md describing the outputs")


def reference_init(settings: dict[str, Any]) -> str:
    """The configured reference initialisation, or the first one."""
    return settings["evaluation"].get("reference_init") or settings["inits"][0]


def pretrain_datasets(settings: dict[str, Any]) -> dict[str, str]:
    """Pipeline initialisation -> its pre-training dataset (where it has no run, by design)."""
    return dict(settings.get("pretrain_datasets") or {})


def _read(stats: dict[str, Path]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[dict[str, Any]]]:
    metrics, tests, roc, boots = [], [], [], []
    for ds, d in stats.items():
        f = stats_files(d)
        for path in (f.metrics_parquet, f.tests, f.roc, f.bootstrap_json):
            if not path.is_file():
                raise ConfigError(f"--stats {ds}={d}: {path.name} is missing (run `cxrbench evaluate` first)")
        metrics.append(pd.read_parquet(f.metrics_parquet))
        tests.append(pd.read_parquet(f.tests))
        roc.append(pd.read_parquet(f.roc))
        boots.append(json.loads(f.bootstrap_json.read_text(encoding="utf-8")))
    return (pd.concat(metrics, ignore_index=True), pd.concat(tests, ignore_index=True),
            pd.concat(roc, ignore_index=True), boots)


def aggregate(
    metrics: pd.DataFrame, tests: pd.DataFrame, *, settings: dict[str, Any], datasets: list[str],
    n_resamples: int,
) -> tuple[pd.DataFrame, dict[str, Table]]:
    """Adjusted tests and every table, keyed by table name (see ``outputs.table_names``)."""
    ev = settings["evaluation"]
    inits = list(settings["inits"])
    ref = reference_init(settings)
    common = {"n_resamples": n_resamples, "unit": ev["resample_unit"], "family": ev["fdr_family"]}
    pretrain = pretrain_datasets(settings)
    adjusted = adjust_bh(tests, family=ev["fdr_family"], alpha=ev["alpha"])
    tables = {
        "auroc_main": main_table(metrics, adjusted, inits=inits, datasets=datasets, reference=ref,
                                 pretrain_datasets=pretrain, **common),
        "pairwise_tests": tests_table(adjusted, metrics, min_positives=int(ev["min_positives"]), **common),
    }
    if settings.get("pipeline_inits"):
        tables["auroc_overlap"] = overlap_table(adjusted, pipeline_inits=list(settings["pipeline_inits"]),
                                                inits=inits, datasets=datasets, pretrain_datasets=pretrain, **common)
    for ds in datasets:
        tables[f"auroc_per_label_{ds}"] = per_label_table(metrics, adjusted, dataset=ds, inits=inits, reference=ref,
                                                          min_positives=int(ev["min_positives"]),
                                                          pretrain_datasets=pretrain, **common)
    return adjusted, tables


def run(args: argparse.Namespace) -> int:
    try:
        settings = parse_settings(args.settings)
        stats: dict[str, Path] = {}
        for item in args.stats:
            ds, sep, d = item.partition("=")
            if not sep or not ds or not d:
                raise ConfigError(f"--stats {item!r}: expected DATASET=DIR")
            stats[ds] = Path(d)
        metrics, tests, roc, boots = _read(stats)
        n_res = {b["n_resamples"] for b in boots}
        if len(n_res) != 1:
            raise ConfigError(f"stats folders were bootstrapped with different n_resamples: {sorted(n_res)}")
        datasets = list(stats)
        adjusted, tables = aggregate(metrics, tests, settings=settings, datasets=datasets, n_resamples=n_res.pop())
    except (ConfigError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    tables_dir, figures_dir = Path(args.tables_dir), Path(args.figures_dir)
    expected = table_names(datasets, overlap=bool(settings.get("pipeline_inits")))
    if sorted(expected) != sorted(tables):  # the rule's declared outputs and what we write must agree
        raise RuntimeError(f"table set {sorted(tables)} differs from outputs.table_names {sorted(expected)}")
    written: list[Path] = []
    for name, table in tables.items():
        files = table_files(tables_dir, name)
        write_table(table, files)
        written += files.values()
    inits = list(settings["inits"])
    min_pos = int(settings["evaluation"]["min_positives"])
    pretrain = pretrain_datasets(settings)
    scale = heatmap_scale(metrics)  # one colour scale for the whole heatmap family
    for ds in datasets:
        for kind in ("roc", "heatmap"):
            if kind == "roc":
                fig = roc_figure(roc[roc["dataset"] == ds], dataset=ds, inits=inits, metrics=metrics,
                                 min_positives=min_pos)
            else:
                fig = heatmap_figure(metrics, dataset=ds, inits=inits, scale=scale, min_positives=min_pos,
                                     pretrain_datasets=pretrain)
            files = figure_files(figures_dir, f"{kind}_{ds}")
            save_figure(fig, files)
            written += files.values()
    files = figure_files(figures_dir, "forest")
    save_figure(forest_figure(adjusted, inits=inits, reference=reference_init(settings),
                              datasets=datasets, pretrain_datasets=pretrain), files)
    written += files.values()
    readme = Path(args.readme)
    root = readme.parent
    for d in stats.values():
        written += stats_files(d).all()
    rel = [Path(os.path.relpath(p, root)).as_posix() for p in written]
    rel.append(readme.name)
    full = {**settings, "reference_init": reference_init(settings)}
    readme.write_text(results_readme(full, rel, headline=tables["auroc_main"]), encoding="utf-8")
    _logger.info("wrote %d tables, %d figures and %s", len(tables), len(figure_names(datasets)), readme)
    return 0

