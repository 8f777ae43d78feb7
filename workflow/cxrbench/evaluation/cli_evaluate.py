"""``cxrbench evaluate``: metrics, the shared paired bootstrap and pairwise tests for one dataset.

Reads every run's ``predictions.parquet`` on the dataset, draws the bootstrap indices once (seeded by
the master seed and the dataset name), applies them to every run and writes the stats folder
(file names in ``cxrbench.evaluation.outputs``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pandas as pd

from cxrbench.config import ConfigError, parse_settings
from cxrbench.evaluation.bootstrap import bootstrap_runs, draw_indices, macro_over, summarise
from cxrbench.evaluation.comparisons import compare_runs
from cxrbench.evaluation.metrics import (
    MACRO,
    THRESHOLD_METRICS,
    defined_labels,
    point_metrics,
    roc_points,
    youden_threshold,
)
from cxrbench.evaluation.outputs import stats_files
from cxrbench.evaluation.predictions import PredictionError, RunPredictions, read_predictions
from cxrbench.training.settings import derive_seed  # the project's one stable seed derivation

_logger = logging.getLogger(__name__)

__all__ = ["add_arguments", "evaluate_dataset", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--settings", required=True, help="JSON: evaluation settings, seed, inits")
    p.add_argument("--dataset", required=True, help="dataset name (mixed into the bootstrap seed)")
    p.add_argument("--predictions", action="append", required=True, metavar="INIT=PATH",
                   help="a run's predictions.parquet; repeat once per initialisation")
    p.add_argument("--out-dir", required=True, help="the dataset's stats folder")
    p.add_argument("--threads", type=int, default=1, help="threads for the bootstrap kernel")


def _parse_pairs(items: list[str], flag: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ConfigError(f"{flag} {item!r}: expected NAME=PATH")
        if key in pairs:
            raise ConfigError(f"{flag}: {key!r} given twice")
        pairs[key] = value
    return pairs


def _check_paired(runs: dict[str, RunPredictions], paths: dict[str, str]) -> None:
    """Every run must hold the same test images with the same patients, or pairing is meaningless."""
    first = next(iter(runs))
    ref = runs[first].test
    for init, run in runs.items():
        t = run.test
        if not np.array_equal(t.image_ids, ref.image_ids):
            diff = sorted(set(t.image_ids) ^ set(ref.image_ids))[:3]
            raise PredictionError(
                f"{paths[init]} and {paths[first]}: test images differ (e.g. {diff}); runs on one dataset must "
                "predict the same test set for a paired bootstrap"
            )
        if not np.array_equal(t.patient_ids, ref.patient_ids):
            raise PredictionError(f"{paths[init]} and {paths[first]}: patient_id of some test image differs")


def _thresholds(run: RunPredictions, mode: str, *, source: str) -> np.ndarray:
    """Per-label Youden thresholds: from validation (fixed) or refitted on the full test set (study)."""
    split = run.test if mode == "study" else run.val
    if split is None:
        raise PredictionError(f"{source}: threshold_mode 'validation' needs rows with split 'val'")
    thr = np.array([youden_threshold(split.targets[:, j], split.scores[:, j]) for j in range(len(run.labels))])
    for j in np.flatnonzero(np.isnan(thr)):
        _logger.warning("%s: label %r has one class in split %r: no Youden threshold, thresholded metrics NaN",
                        source, run.labels[j], "test" if mode == "study" else "val")
    return thr


def evaluate_dataset(
    runs: dict[str, RunPredictions],
    *,
    dataset: str,
    evaluation: dict[str, Any],
    seed: int,
    sources: dict[str, str] | None = None,
) -> dict[str, Any]:
    """All statistics of one dataset from its runs (inits in config order); pure apart from logging.

    Returns a dict with ``indices``, ``bootstrap`` (JSON-able parameters), ``units``, ``metrics``,
    ``resamples``, ``tests`` and ``roc`` (DataFrames).
    """
    sources = sources or {k: k for k in runs}
    _check_paired(runs, sources)
    test0 = next(iter(runs.values())).test
    unit = evaluation["resample_unit"]
    if unit == "patient":
        unit_ids, unit_of_image = np.unique(test0.patient_ids.astype(str), return_inverse=True)
    else:
        unit_ids, unit_of_image = test0.image_ids.astype(str), np.arange(len(test0.image_ids))
    boot_seed = derive_seed(seed, "bootstrap", dataset)
    n_boot = int(evaluation["n_bootstrap"])
    indices = draw_indices(len(unit_ids), n_resamples=n_boot, seed=boot_seed)
    bootstrap = {
        "dataset": dataset,
        "seed": boot_seed,
        "seed_derivation": f"cxrbench.training.settings.derive_seed({seed}, 'bootstrap', '{dataset}')",
        "master_seed": seed,
        "generator": "numpy.random.default_rng(seed).integers(0, n_units, size=(n_resamples, n_units))",
        "n_resamples": n_boot,
        "resample_unit": unit,
        "n_units": len(unit_ids),
        "n_test_images": len(test0.image_ids),
        "units_sha256": hashlib.sha256("\n".join(unit_ids).encode()).hexdigest(),
        "threshold_mode": evaluation["threshold_mode"],
        "inits": list(runs),
        "numpy": np.__version__,
    }
    mode = evaluation["threshold_mode"]
    metric_frames, resample_frames, roc_frames = [], [], []
    per_run: dict[str, tuple[tuple[str, ...], np.ndarray]] = {}
    defined: dict[str, set[str]] = {}
    for init, run in runs.items():
        context = f"{dataset}/{init}: "
        t0 = time.perf_counter()
        thr = _thresholds(run, mode, source=sources[init])
        metrics = point_metrics(run.labels, run.test.targets, run.test.scores, thresholds=thr, context=context)
        result = bootstrap_runs(
            run.test.targets, run.test.scores, indices,
            unit_of_image=unit_of_image, thresholds=None if mode == "study" else thr,
        )
        auc = result.auroc[:, 0, :]
        ok_cols = np.flatnonzero(defined_labels(run.test.targets))
        per_run[init] = (run.labels, auc)
        defined[init] = {run.labels[j] for j in ok_cols}
        thr_metrics = {k: v[:, 0, :] for k, v in result.threshold_metrics().items()}
        series: dict[str, dict[str, np.ndarray]] = {
            lab: {"auroc": auc[:, j], **{k: v[:, j] for k, v in thr_metrics.items()}}
            for j, lab in enumerate(run.labels)
        }
        series[MACRO] = {"auroc": macro_over(auc, ok_cols), **{k: macro_over(v, ok_cols) for k, v in thr_metrics.items()}}
        boot_rows = []
        for lab, values in series.items():
            row: dict[str, Any] = {"label": lab}
            s = summarise(values["auroc"], context=f"{context}label {lab!r} AUROC: ") if (
                lab == MACRO or lab in defined[init]) else summarise(values["auroc"][:0])
            row.update({"auroc_boot_mean": s["mean"], "auroc_boot_sd": s["sd"], "auroc_ci_low": s["ci_low"],
                        "auroc_ci_high": s["ci_high"], "n_resamples_valid": s["n_resamples"]})
            for k in THRESHOLD_METRICS:
                v = values[k][~np.isnan(values[k])]
                row[f"{k}_boot_mean"] = float(v.mean()) if v.size else float("nan")
                row[f"{k}_boot_sd"] = float(v.std(ddof=1)) if v.size > 1 else float("nan")
            boot_rows.append(row)
        frame = metrics.merge(pd.DataFrame(boot_rows), on="label", how="left", validate="one_to_one")
        frame.insert(0, "init", init)
        frame.insert(0, "dataset", dataset)
        frame["threshold_mode"] = mode
        metric_frames.append(frame)
        resample_frames.append(pd.DataFrame({
            "dataset": dataset, "init": init,
            "resample": np.tile(np.arange(n_boot), len(series)),
            "label": np.repeat(list(series), n_boot),
            "auroc": np.concatenate([v["auroc"] for v in series.values()]),
        }))
        for j, lab in enumerate(run.labels):
            pts = roc_points(run.test.targets[:, j], run.test.scores[:, j])
            pts.insert(0, "label", lab)
            pts.insert(0, "init", init)
            pts.insert(0, "dataset", dataset)
            roc_frames.append(pts)
        _logger.info("%s%d labels, %d resamples in %.2f s", context, len(run.labels), n_boot, time.perf_counter() - t0)
    tests = compare_runs(per_run, defined)
    tests.insert(0, "dataset", dataset)
    return {
        "indices": indices,
        "bootstrap": bootstrap,
        "units": pd.DataFrame({"position": np.arange(len(unit_ids)), "unit_id": unit_ids}),
        "metrics": pd.concat(metric_frames, ignore_index=True),
        "resamples": pd.concat(resample_frames, ignore_index=True),
        "tests": tests,
        "roc": pd.concat(roc_frames, ignore_index=True),
    }


def run(args: argparse.Namespace) -> int:
    try:
        settings = parse_settings(args.settings)
        preds = _parse_pairs(args.predictions, "--predictions")
        order = [i for i in settings["inits"] if i in preds]
        unknown = sorted(set(preds) - set(order))
        if unknown:
            raise ConfigError(f"--predictions: {', '.join(unknown)} not among the configured inits {settings['inits']}")
        runs = {init: read_predictions(preds[init]) for init in order}
        numba.set_num_threads(max(1, min(args.threads, numba.config.NUMBA_NUM_THREADS)))
        out = evaluate_dataset(runs, dataset=args.dataset, evaluation=settings["evaluation"],
                               seed=int(settings["seed"]), sources=preds)
    except (ConfigError, PredictionError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    files = stats_files(args.out_dir)
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    # int32 halves the file (1,000 x 40,000 test images = 160 MB); the values are those drawn.
    np.save(files.indices, out["indices"].astype(np.int32))
    files.bootstrap_json.write_text(json.dumps(out["bootstrap"], indent=2, sort_keys=True) + "\n", encoding="utf-8")
    out["units"].to_parquet(files.units, index=False)
    out["metrics"].to_parquet(files.metrics_parquet, index=False)
    out["metrics"].to_csv(files.metrics_csv, index=False, float_format="%.10g")
    out["resamples"].to_parquet(files.resamples, index=False)
    out["tests"].to_parquet(files.tests, index=False)
    out["roc"].to_parquet(files.roc, index=False)
    _logger.info("wrote %s", args.out_dir)
    return 0
