"""``cxrbench grid``: the experiment grid's tables (``grid.csv``, ``grid_deltas.csv``) and figures.

Reads one stats folder per cell (``cxrbench evaluate`` output), checks that every cell of a dataset used the
same bootstrap indices and test units, then writes the seed-pooled statistics of ``cxrbench.evaluation.grid``
and the figures of ``cxrbench.evaluation.grid_figures``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.config import ConfigError, parse_settings
from cxrbench.evaluation.figures import save_figure
from cxrbench.evaluation.grid import CellStats, GridError, cell_stats, contrasts_from_settings, grid_deltas, grid_table
from cxrbench.evaluation.grid_figures import GRID_FIGURES, grid_figures
from cxrbench.evaluation.outputs import GRID_TABLES, figure_files, grid_table_file, stats_files
from cxrbench.runkey import CellKey

_logger = logging.getLogger(__name__)

__all__ = ["GRID_TABLES", "add_arguments", "check_shared_indices", "grid_table_files", "read_cells", "run"]



def grid_table_files(tables_dir: str | Path) -> dict[str, Path]:
    """Table name -> CSV path (``grid``, ``grid_deltas``)."""
    return {name: grid_table_file(tables_dir, name) for name in GRID_TABLES}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--settings", required=True,
                   help="JSON: evaluation settings, seed, inits, pipeline_inits, contrasts ([[a, b], ...])")
    p.add_argument("--cell", action="append", required=True, metavar="RELPATH=DIR",
                   help="a cell's stats folder, RELPATH = <dataset>/<size>px/<regime>/frac-<f>/seed-<s>; "
                        "repeat once per cell, in config order")
    p.add_argument("--tables-dir", required=True)
    p.add_argument("--figures-dir", required=True)


def _indices_digest(path: Path) -> tuple[tuple[int, ...], str]:
    """Shape and SHA-256 of an indices array, read in row blocks (a large test set's array is ~160 MB)."""
    arr = np.load(path, mmap_mode="r")
    digest = hashlib.sha256(str(arr.dtype).encode())
    step = max(1, (1 << 24) // max(1, arr.itemsize * int(np.prod(arr.shape[1:]))))
    for start in range(0, arr.shape[0], step):
        digest.update(np.ascontiguousarray(arr[start:start + step]).tobytes())
    return tuple(arr.shape), digest.hexdigest()


def _first_difference(a: Path, b: Path) -> str:
    x, y = np.load(a, mmap_mode="r"), np.load(b, mmap_mode="r")
    if x.shape != y.shape:
        return f"shape {x.shape} vs {y.shape}"
    if x.dtype != y.dtype:
        return f"dtype {x.dtype} vs {y.dtype}"
    row = next(i for i in range(x.shape[0]) if not np.array_equal(x[i], y[i]))
    return f"first differing resample: {row}"


def check_shared_indices(cells: dict[CellKey, Path]) -> int:
    """Every cell of a dataset must hold the same bootstrap indices and test units; returns B (one for all).

    The indices depend only on the dataset and the master seed, and the test split not at all on size, regime,
    fraction or seed; a difference means a stale or miswired stats folder, and pairing across seeds would break.
    """
    first: dict[str, tuple[CellKey, Path, tuple[int, ...], str, str | None]] = {}
    n_resamples: set[int] = set()
    for key, d in cells.items():
        files = stats_files(d)
        shape, digest = _indices_digest(files.indices)
        units = json.loads(files.bootstrap_json.read_text(encoding="utf-8")).get("units_sha256")
        n_resamples.add(shape[0])
        if key.dataset not in first:
            first[key.dataset] = (key, files.indices, shape, digest, units)
            continue
        key0, path0, _, digest0, units0 = first[key.dataset]
        if digest != digest0:
            raise GridError(
                f"bootstrap indices differ between cells {key0.relpath()} ({path0}) and {key.relpath()} "
                f"({files.indices}): {_first_difference(path0, files.indices)}. Every cell of dataset "
                f"{key.dataset!r} must use the same indices (they depend only on the master seed and the dataset); "
                "re-run `cxrbench evaluate` for the stale cell"
            )
        if units != units0:
            raise GridError(f"test units differ between cells {key0.relpath()} and {key.relpath()} (units_sha256 in "
                            f"{stats_files(d).bootstrap_json}): the cells of {key.dataset!r} evaluated different "
                            "test images, so they cannot be paired")
    if len(n_resamples) != 1:
        raise GridError(f"cells were bootstrapped with different n_resamples: {sorted(n_resamples)}")
    return n_resamples.pop()


def read_cells(cells: dict[CellKey, Path], *, inits: list[str]) -> list[CellStats]:
    """Every cell's resamples and metrics, after checking that the cells of each dataset are paired."""
    for key, d in cells.items():
        files = stats_files(d)
        for path in (files.indices, files.bootstrap_json, files.resamples, files.metrics_parquet):
            if not path.is_file():
                raise GridError(f"--cell {key.relpath()}={d}: {path.name} is missing (run `cxrbench evaluate` first)")
    n_resamples = check_shared_indices(cells)
    return [cell_stats(key, Path(d), pd.read_parquet(stats_files(d).resamples),
                       pd.read_parquet(stats_files(d).metrics_parquet), inits=inits, n_resamples=n_resamples)
            for key, d in cells.items()]


def _parse_cells(items: list[str]) -> dict[CellKey, Path]:
    cells: dict[CellKey, Path] = {}
    for item in items:
        rel, sep, d = item.partition("=")
        if not sep or not rel or not d:
            raise GridError(f"--cell {item!r}: expected <dataset>/<size>px/<regime>/frac-<f>/seed-<s>=DIR")
        key = CellKey.from_relpath(rel)
        if key in cells:
            raise GridError(f"--cell {rel!r} given twice")
        cells[key] = Path(d)
    return cells


def run(args: argparse.Namespace) -> int:
    try:
        settings = parse_settings(args.settings)
        inits = list(settings["inits"])
        contrasts = contrasts_from_settings(settings)
        cells = read_cells(_parse_cells(args.cell), inits=inits)
        grid = grid_table(cells, inits=inits, master_seed=int(settings["seed"]))
        deltas = grid_deltas(cells, contrasts=contrasts, evaluation=settings["evaluation"],
                             master_seed=int(settings["seed"]))
    except (ConfigError, GridError, KeyError, ValueError) as exc:  # ValueError: CellKey.from_relpath
        print(f"error: {exc}", file=sys.stderr)
        return 2
    tables = grid_table_files(args.tables_dir)
    tables["grid"].parent.mkdir(parents=True, exist_ok=True)
    grid.to_csv(tables["grid"], index=False, float_format="%.10g")
    deltas.to_csv(tables["grid_deltas"], index=False, float_format="%.10g")
    figures = grid_figures(grid, deltas, cells=[c.key for c in cells], inits=inits, contrasts=contrasts,
                           alpha=float(settings["evaluation"]["alpha"]))
    if sorted(figures) != sorted(GRID_FIGURES):  # the rule declares exactly GRID_FIGURES
        raise RuntimeError(f"figure set {sorted(figures)} differs from GRID_FIGURES {sorted(GRID_FIGURES)}")
    for name, fig in figures.items():
        save_figure(fig, figure_files(args.figures_dir, name))
    _logger.info("grid of %d cells: %d rows in %s, %d in %s, %d figures", len(cells), len(grid), tables["grid"],
                 len(deltas), tables["grid_deltas"], len(figures))
    return 0
