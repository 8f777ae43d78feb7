"""External validation: train on dataset A, test on dataset B.

Three parts, each a pure function the CLIs (``cli_external``) wrap:

* **Shared labels** (:func:`shared_labels_of_pair`, :func:`label_overlap`): the canonical findings a run trained
  on A can be scored on in B, with the merging rules of the single-dataset runs. A finding *merges* its
  children: the canonical map's ``parent`` links (UKA left/right findings) and the unions its source columns
  imply (a finding whose source labels in some dataset are exactly the union of two or more other findings',
  e.g. ``nodule_or_mass`` = ``nodule`` | ``mass`` in ChestX-ray14 and PadChest). Per shared label the rule is

  - ``same``: A predicts it and B assesses it;
  - ``target_merged``: A predicts the merged finding, B assesses all its children: B's target is positive
    when any child is (``training.data.add_merged_columns``, as the single-dataset runs merge UKA);
  - ``score_max``: A predicts all the children, B assesses the merged finding: the score is the **maximum of
    A's child probabilities**. It is the smallest probability of "any child" consistent with the children's
    (the lower Fréchet bound, free of any independence assumption), a monotone "any positive" score like the
    target merge, and stays a probability in [0, 1].

  A merge needs every child on its side: a partial OR would mislabel the missing child's positives as
  negatives (or miss them in the score).
* **Inference** (:func:`predict_external`): A's ``best.pt`` rebuilt with the training code, B's test split at
  A's input size, predictions in the run contract (docs/contracts.md §4) plus ``external.json`` with A's
  validation (Youden) threshold per shared label.
* **Aggregation** (:func:`external_matrix`): per (initialisation, train A, test B, grid cell) AUROC with
  bootstrap CIs over **B's** bootstrap indices, the diagonal (A = B) from A's own predictions (so it equals the
  in-domain tables), paired tests between initialisations per matrix cell with Benjamini-Hochberg over each
  contrast's matrix, and the generalisation gap.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.config import ConfigError
from cxrbench.evaluation.bootstrap import bootstrap_runs, macro_over, summarise
from cxrbench.evaluation.comparisons import adjust_bh, compare_runs
from cxrbench.evaluation.metrics import (
    MACRO,
    THRESHOLD_METRICS,
    defined_labels,
    point_metrics,
    youden_threshold,
)
from cxrbench.evaluation.outputs import stats_files
from cxrbench.evaluation.predictions import (
    PredictionError,
    RunPredictions,
    SplitArrays,
    from_frame,
    read_predictions,
)
from cxrbench.runkey import CellKey, RunKey, parse_fraction
from cxrbench.training.data import DataError, add_merged_columns

_logger = logging.getLogger(__name__)

__all__ = [
    "AXES",
    "GAP_COLUMNS",
    "RULES",
    "CellStats",
    "ExternalFiles",
    "ExternalRun",
    "SharedLabel",
    "external_files",
    "external_matrix",
    "external_predictions",
    "figure_names",
    "in_domain_run",
    "label_overlap",
    "merged_children",
    "parse_cell_key",
    "parse_run_key",
    "predict_external",
    "read_cell_stats",
    "read_external",
    "shared_labels_of_pair",
    "table_names",
    "to_shared",
    "write_external",
]

RULES = ("same", "target_merged", "score_max")
# Grid axes columns of every external table (CellKey.axes() without the dataset).
AXES = ("size", "regime", "label_fraction", "seed")


# --- shared labels ------------------------------------------------------------------------------------


@functools.cache
def merged_children() -> dict[str, tuple[str, ...]]:
    """Merged finding -> the findings it merges, in map order (``parent`` links and unions of source labels).

    Raises:
        ValueError: two datasets (or a dataset and the ``parent`` column) disagree on a finding's children.
    """
    from cxrbench.labels.canonical import MAP_ADAPTERS, canonical_map, source_rules

    cmap = canonical_map()
    order = {name: i for i, name in enumerate(cmap.index)}
    found: dict[str, tuple[tuple[str, ...], str]] = {}

    def record(parent: str, children: list[str], where: str) -> None:
        kids = tuple(sorted(children, key=order.__getitem__))
        if parent in found and found[parent][0] != kids:
            raise ValueError(
                f"canonical map: {parent!r} merges {list(found[parent][0])} ({found[parent][1]}) but "
                f"{list(kids)} ({where})"
            )
        found.setdefault(parent, (kids, where))

    links: dict[str, list[str]] = {}
    for name, parent in zip(cmap.index, cmap["parent"], strict=True):
        if parent:
            links.setdefault(parent, []).append(name)
    for parent, children in links.items():
        record(parent, children, "column parent")
    for adapter in MAP_ADAPTERS:
        sources = {f: set(rule.sources) for f, rule in source_rules(adapter).items()}
        for finding, own in sources.items():
            parts = [f for f, s in sources.items() if f != finding and s < own]
            if len(parts) >= 2 and set().union(*(sources[f] for f in parts)) == own:
                record(finding, parts, f"column {adapter}")
    return {parent: kids for parent, (kids, _) in found.items()}


@dataclass(frozen=True)
class SharedLabel:
    """One label a run trained on A is scored on in B: A's outputs giving the score, B's columns the target."""

    label: str
    rule: str
    score_from: tuple[str, ...]
    target_from: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "rule": self.rule, "score_from": list(self.score_from),
                "target_from": list(self.target_from)}

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> SharedLabel:
        return cls(str(value["label"]), str(value["rule"]), tuple(value["score_from"]), tuple(value["target_from"]))


def shared_labels_of_pair(a_labels: Sequence[str], b_labels: Sequence[str]) -> list[SharedLabel]:
    """The labels a model predicting ``a_labels`` can be scored on in a dataset assessing ``b_labels``.

    Ordered by A's first contributing output. Where neither side has a merged finding but both have all its
    children, the children are compared one by one (``same``) and the merged finding is not added.
    """
    kids = merged_children()
    a, b = set(a_labels), set(b_labels)
    parents_of: dict[str, list[str]] = {}
    for parent, children in kids.items():
        for child in children:
            parents_of.setdefault(child, []).append(parent)
    candidates = list(dict.fromkeys(c for lab in a_labels for c in (lab, *parents_of.get(lab, ()))))
    out = []
    for label in candidates:
        children = kids.get(label, ())
        if label in a and label in b:
            out.append(SharedLabel(label, "same", (label,), (label,)))
        elif label in a and children and set(children) <= b:
            out.append(SharedLabel(label, "target_merged", (label,), children))
        elif label in b and children and set(children) <= a:
            out.append(SharedLabel(label, "score_max", children, (label,)))
    return out


def label_overlap(labels_by_dataset: dict[str, list[str]]) -> pd.DataFrame:
    """Shared labels of every ordered pair of different datasets (``tables/label_overlap.csv``).

    Columns: ``dataset_a`` (trained on), ``dataset_b`` (tested on), ``label``, ``rule`` (see ``RULES``),
    ``score_from`` (A's outputs, ``|``-joined) and ``target_from`` (B's label columns). A pair without a shared
    label has no row.
    """
    rows = []
    for ds_a, labels_a in labels_by_dataset.items():
        for ds_b, labels_b in labels_by_dataset.items():
            if ds_a == ds_b:
                continue
            for s in shared_labels_of_pair(labels_a, labels_b):
                rows.append({"dataset_a": ds_a, "dataset_b": ds_b, "label": s.label, "rule": s.rule,
                             "score_from": "|".join(s.score_from), "target_from": "|".join(s.target_from)})
    columns = ["dataset_a", "dataset_b", "label", "rule", "score_from", "target_from"]
    return pd.DataFrame(rows, columns=columns).astype("string")


def to_shared(
    labels: Sequence[str], targets: np.ndarray, scores: np.ndarray, shared: Sequence[SharedLabel], *, source: str
) -> tuple[np.ndarray, np.ndarray]:
    """A model's own (N, L) targets and scores -> (N, S) on the shared labels, from the A side.

    Score: the maximum over ``score_from``; target: ``score_from`` merged as ``add_merged_columns`` merges
    (positive if any is, negative if every assessed one is negative, NaN if none is assessed).

    Raises:
        PredictionError: an output the mapping needs is not among ``labels`` (the message names ``source``).
    """
    col = {lab: j for j, lab in enumerate(labels)}
    missing = sorted({c for s in shared for c in s.score_from if c not in col})
    if missing:
        raise PredictionError(f"{source}: no prediction for label(s) {missing}, needed for the shared labels "
                              f"{[s.label for s in shared]} (the run predicts {list(labels)})")
    out_t = np.empty((len(scores), len(shared)))
    out_s = np.empty((len(scores), len(shared)))
    for k, s in enumerate(shared):
        cols = [col[c] for c in s.score_from]
        out_s[:, k] = scores[:, cols].max(axis=1)
        if len(cols) == 1:
            out_t[:, k] = targets[:, cols[0]]
            continue
        children = pd.DataFrame({f"y_{c}": targets[:, j] for c, j in zip(s.score_from, cols, strict=True)})
        merged = add_merged_columns(children, [s.label], parents=dict.fromkeys(s.score_from, s.label))
        out_t[:, k] = merged[f"y_{s.label}"].to_numpy(dtype=np.float64)
    return out_t, out_s


# --- keys and files -----------------------------------------------------------------------------------


def _cell_parts(parts: Sequence[str]) -> dict[str, Any]:
    dataset, size, regime, fraction, seed = parts
    if not (size.endswith("px") and fraction.startswith("frac-") and seed.startswith("seed-")):
        raise ValueError
    return {"dataset": dataset, "size": int(size[:-2]), "regime": regime,
            "fraction": parse_fraction(fraction[len("frac-"):]), "seed": int(seed[len("seed-"):])}


def parse_run_key(text: str) -> RunKey:
    """``<init>/<dataset>/<size>px/<regime>/frac-<fraction>/seed-<seed>`` (``RunKey.relpath()``) -> RunKey."""
    parts = PurePosixPath(text).parts
    try:
        if len(parts) != 6:
            raise ValueError
        return RunKey(init=parts[0], **_cell_parts(parts[1:]))
    except ValueError:
        raise ConfigError(f"run key {text!r}: expected <init>/<dataset>/<size>px/<regime>/frac-<f>/seed-<s> "
                          "(RunKey.relpath())") from None


def parse_cell_key(text: str) -> CellKey:
    """``<dataset>/<size>px/<regime>/frac-<fraction>/seed-<seed>`` (``CellKey.relpath()``) -> CellKey."""
    parts = PurePosixPath(text).parts
    try:
        if len(parts) != 5:
            raise ValueError
        key = CellKey(**_cell_parts(parts))
        key.with_init("x")  # validates regime and fraction as RunKey does
        return key
    except ValueError:
        raise ConfigError(f"cell key {text!r}: expected <dataset>/<size>px/<regime>/frac-<f>/seed-<s> "
                          "(CellKey.relpath())") from None


def _axes(key: RunKey | CellKey) -> dict[str, Any]:
    """Grid-axes columns of a key (``AXES``)."""
    return {"size": key.size, "regime": key.regime, "label_fraction": key.fraction, "seed": key.seed}


@dataclass(frozen=True)
class ExternalFiles:
    """What ``cxrbench external-predict`` writes into its ``--out-dir``."""

    predictions: Path
    meta: Path


def external_files(out_dir: str | Path) -> ExternalFiles:
    """File names inside one external-prediction folder."""
    d = Path(out_dir)
    return ExternalFiles(predictions=d / "predictions.parquet", meta=d / "external.json")


def write_external(out_dir: str | Path, predictions: pd.DataFrame, meta: dict[str, Any]) -> ExternalFiles:
    """Write one external-prediction folder: the predictions (run contract) and ``external.json``."""
    from cxrbench.training.cli import write_predictions

    files = external_files(out_dir)
    files.predictions.parent.mkdir(parents=True, exist_ok=True)
    write_predictions([predictions], files.predictions)
    files.meta.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return files


def table_names() -> list[str]:
    """CSV tables ``cxrbench external`` writes into ``--tables-dir`` (``<name>.csv``)."""
    return ["label_overlap", "external", "external_tests", "external_gap"]


def figure_names(inits: Sequence[str], contrasts: Sequence[tuple[str, str]]) -> list[str]:
    """Figures ``cxrbench external`` writes into ``--figures-dir`` (``<name>.pdf`` and ``.png``): the AUROC
    matrix per initialisation, the Δ matrix per contrast (a, b) (Δ = a − b; the grid's
    ``contrasts_from_settings``), and the generalisation gap."""
    names = [f"external_auroc_{i}" for i in inits]
    names += [f"external_delta_{a}_vs_{b}" for a, b in contrasts]
    return [*names, "external_gap"]


# --- inference ----------------------------------------------------------------------------------------


def _dataset_name(df: pd.DataFrame, source: Path) -> str:
    names = sorted(set(df["dataset"].astype(str))) if "dataset" in df.columns else []
    if len(names) != 1:
        raise DataError(f"{source}: expected one value in column 'dataset', got {names}")
    return names[0]


def predict_external(
    run_dir: Path,
    *,
    key: RunKey,
    labels_path: Path,
    manifest_path: Path,
    cache_dir: Path | None = None,
    device: str = "auto",
    num_workers: int = 0,
    threads: int = 0,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Predict dataset B's test split with the run in ``run_dir`` (trained on A) on the labels they share.

    Returns the predictions (run contract, split ``test`` only, labels = the shared labels with B's targets)
    and the content of ``external.json``.

    Raises:
        ConfigError: ``key`` does not name this run, or B is A's own dataset.
        DataError: B's files break their contract. (A pair without a shared label is not an error: empty
            predictions and an ``external.json`` with no shared label, which ``read_external`` skips.)
        PredictionError: the run's ``predictions.parquet`` lacks an output the mapping needs.
    """
    import torch

    from cxrbench.models.factory import build_model, sha256_file
    from cxrbench.models.registry import InitSpec
    from cxrbench.training.cli import input_transform, resolve_device, run_precision
    from cxrbench.training.data import CxrDataset, load_split, read_labels_table, read_manifest
    from cxrbench.training.loop import predict

    run_dir = Path(run_dir)
    best_path, run_json = run_dir / "best.pt", run_dir / "run.json"
    for path in (best_path, run_json, run_dir / "predictions.parquet"):
        if not path.is_file():
            raise ConfigError(f"{path} does not exist: --run-dir must be a finished training run")
    best = torch.load(best_path, map_location="cpu", weights_only=True)
    settings = json.loads(run_json.read_text(encoding="utf-8"))["settings"]
    if (best.get("arm"), best.get("dataset")) != (key.init, key.dataset):
        raise ConfigError(f"{best_path}: run of {best.get('arm')!r} on {best.get('dataset')!r}, but the key says "
                          f"{key.init!r} on {key.dataset!r}")
    a_labels = list(best["labels"])
    labels_df, b_labels = read_labels_table(labels_path)
    test_dataset = _dataset_name(labels_df, Path(labels_path))
    if test_dataset == key.dataset:
        raise ConfigError(f"{labels_path}: {test_dataset!r} is the run's own dataset; its in-domain result comes "
                          "from the run's predictions.parquet")
    shared = shared_labels_of_pair(a_labels, b_labels)
    if not shared:
        # Which pairs share labels is known only once labels are harmonised (and, for a chain in study transfer,
        # once its label subset is), so the workflow plans every pair and this one records that it has none.
        _logger.warning("%s (trained on %r, labels %s) shares no label with %s (%r, labels %s): nothing to "
                        "predict; the pair is left out of the matrix", best_path, key.dataset, a_labels,
                        labels_path, test_dataset, b_labels)
        columns = ["split", "image_id", "patient_id", "label", "target", "score"]
        meta = {"run_key": key.relpath().as_posix(), "init": key.init, "train_dataset": key.dataset,
                "test_dataset": test_dataset, **_axes(key), "labels": [], "shared": [],
                "validation_thresholds": {}, "run_labels": a_labels, "images": {"test": 0},
                "run_dir": str(run_dir), "note": "no shared label"}
        return pd.DataFrame(columns=columns), meta
    for s in shared:
        if s.rule == "target_merged":
            labels_df = add_merged_columns(labels_df, [s.label], parents=dict.fromkeys(s.target_from, s.label))
    names = [s.label for s in shared]
    manifest = read_manifest(manifest_path)
    test = load_split(labels_df, names, "test", manifest=manifest, png_root=Path(manifest_path).parent,
                      cache_dir=Path(cache_dir) if cache_dir is not None else None, source_name=str(labels_path))

    if threads > 0:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    spec = InitSpec(name=key.init, model=best["model_name"], source="none", pooling=best.get("pooling"))
    # The architecture comes from the factory; every weight (head included) then from best.pt, strictly.
    model = build_model(spec, num_classes=len(a_labels), img_size=int(best["img_size"]), hf_home=settings["hf_home"])
    model.load_state_dict(best["model"])
    model.to(dev)
    transform = input_transform(model, settings)
    precision = run_precision(settings["training"], dev)
    scores_a = predict(model, CxrDataset(test, train=False, **transform), device=dev,
                       batch_size=int(settings["training"]["batch_size"]), num_workers=num_workers,
                       precision=precision)
    frame, meta = external_predictions(
        key=key, test_dataset=test_dataset, a_labels=a_labels, shared=shared, image_ids=test.image_ids,
        patient_ids=test.patient_ids, targets=test.targets, scores_a=scores_a,
        own=read_predictions(run_dir / "predictions.parquet"), source=str(run_dir / "predictions.parquet"))
    meta |= {
        "run_dir": str(run_dir),
        "checkpoint_sha256": sha256_file(best_path),
        "img_size": int(best["img_size"]),
        "image_source": test.images.kind,
        "device": {"type": dev.type, "precision": precision},
        "inputs": {"labels": str(labels_path), "manifest": str(manifest_path),
                   "cache_dir": None if cache_dir is None else str(cache_dir)},
    }
    return frame, meta


def external_predictions(
    *,
    key: RunKey,
    test_dataset: str,
    a_labels: Sequence[str],
    shared: Sequence[SharedLabel],
    image_ids: np.ndarray,
    patient_ids: np.ndarray,
    targets: np.ndarray,
    scores_a: np.ndarray,
    own: RunPredictions,
    source: str,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The run's outputs on B's test images -> predictions on the shared labels and the core of ``external.json``.

    Args:
        a_labels, scores_a: the run's labels and its (N, len(a_labels)) probabilities on B's test images.
        targets: (N, S) B's targets of the shared labels (merged where the rule says so).
        own: the run's own predictions (``source`` names the file): its validation split gives A's Youden
            threshold per shared label, mapped as the scores are.

    Raises:
        PredictionError: ``own`` has no validation rows, or lacks an output the mapping needs.
    """
    from cxrbench.training.cli import predictions_frame

    names = [s.label for s in shared]
    _, scores = to_shared(a_labels, np.full(scores_a.shape, np.nan), scores_a, shared, source=source)
    frame = predictions_frame("test", image_ids, patient_ids, names, targets, scores)
    if own.val is None:
        raise PredictionError(f"{source}: no split 'val' rows; A's validation thresholds need them")
    val_t, val_s = to_shared(own.labels, own.val.targets, own.val.scores, shared, source=source)
    thresholds = [youden_threshold(val_t[:, k], val_s[:, k]) for k in range(len(shared))]
    meta = {
        "run_key": key.relpath().as_posix(),
        "init": key.init,
        "train_dataset": key.dataset,
        "test_dataset": test_dataset,
        **_axes(key),
        "labels": names,
        "shared": [s.to_dict() for s in shared],
        # Youden's J on A's own validation split, mapped to the shared labels as the scores are (null: one class)
        "validation_thresholds": {k: (None if np.isnan(v) else float(v)) for k, v in zip(names, thresholds)},
        "run_labels": list(a_labels),
        "images": {"test": len(image_ids)},
    }
    _logger.info("%s on %s: %d test images, %d shared labels (%s)", key.relpath(), test_dataset, len(image_ids),
                 len(names), ", ".join(f"{s.label}: {s.rule}" for s in shared))
    return frame, meta


# --- aggregation inputs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExternalRun:
    """The test predictions of one run on one test dataset (the diagonal when it is the run's own)."""

    key: RunKey
    test_dataset: str
    shared: tuple[SharedLabel, ...]
    test: SplitArrays
    val_thresholds: np.ndarray  # (L,) A's validation Youden threshold per label (NaN: undefined)
    source: str

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(s.label for s in self.shared)

    @property
    def in_domain(self) -> bool:
        return self.test_dataset == self.key.dataset


def read_external(out_dir: str | Path) -> ExternalRun | None:
    """One ``cxrbench external-predict`` folder; None for a pair that shares no label (nothing was predicted).

    Raises:
        PredictionError: a file is missing, or a shared label of ``external.json`` has no predictions.
    """
    files = external_files(out_dir)
    for path in (files.meta, files.predictions):
        if not path.is_file():
            raise PredictionError(f"{path} does not exist (run `cxrbench external-predict` first)")
    meta = json.loads(files.meta.read_text(encoding="utf-8"))
    key = parse_run_key(meta["run_key"])
    if not meta["shared"]:
        _logger.info("%s on %s: no shared label, left out", meta["run_key"], meta["test_dataset"])
        return None
    shared = tuple(SharedLabel.from_dict(s) for s in meta["shared"])
    run = from_frame(pd.read_parquet(files.predictions), source=str(files.predictions))
    missing = [s.label for s in shared if s.label not in run.labels]
    if missing:
        raise PredictionError(f"{files.predictions}: shared label(s) {missing} of {files.meta.name} have no "
                              f"predictions (the file has {list(run.labels)}); rerun external-predict")
    col = [run.labels.index(s.label) for s in shared]
    test = replace(run.test, targets=run.test.targets[:, col], scores=run.test.scores[:, col])
    thr = np.array([np.nan if meta["validation_thresholds"].get(s.label) is None
                    else float(meta["validation_thresholds"][s.label]) for s in shared])
    return ExternalRun(key, str(meta["test_dataset"]), shared, test, thr, str(files.predictions))


def in_domain_run(key: RunKey, predictions_path: str | Path) -> ExternalRun:
    """A run's own ``predictions.parquet`` as the diagonal of the matrix (validation thresholds from its val).

    Raises:
        PredictionError: the file breaks the contract or has no validation rows.
    """
    run = read_predictions(predictions_path)
    if run.val is None:
        raise PredictionError(f"{predictions_path}: no split 'val' rows (needed for the validation thresholds)")
    thr = np.array([youden_threshold(run.val.targets[:, j], run.val.scores[:, j]) for j in range(len(run.labels))])
    shared = tuple(SharedLabel(lab, "same", (lab,), (lab,)) for lab in run.labels)
    return ExternalRun(key, key.dataset, shared, run.test, thr, str(predictions_path))


@dataclass(frozen=True)
class CellStats:
    """A cell's bootstrap of its dataset's test set (from its ``cxrbench evaluate`` stats folder)."""

    indices: np.ndarray  # (B, U)
    unit_ids: np.ndarray  # (U,) image or patient ids the indices point into
    resample_unit: str
    source: str

    def unit_of_image(self, test: SplitArrays, *, source: str) -> np.ndarray:
        """(N,) position of each test image's unit; the predictions must cover exactly the stats' units.

        Raises:
            PredictionError: an image or patient is not among the units, or a unit has no image.
        """
        ids = test.image_ids if self.resample_unit == "image" else test.patient_ids
        pos = pd.Index(self.unit_ids).get_indexer(ids.astype(str))
        if (pos < 0).any():
            raise PredictionError(f"{source}: test {self.resample_unit} {ids[pos < 0][0]!r} is not among the "
                                  f"bootstrap units of {self.source}; predictions and statistics of a dataset must "
                                  "cover the same test images")
        if np.unique(pos).size != len(self.unit_ids):
            raise PredictionError(f"{source}: covers {np.unique(pos).size} of the {len(self.unit_ids)} bootstrap "
                                  f"units of {self.source}; predictions and statistics of a dataset must cover the "
                                  "same test images")
        return pos


def read_cell_stats(stats_dir: str | Path) -> CellStats:
    """Bootstrap indices, units and resampling unit of a stats folder written by ``cxrbench evaluate``."""
    files = stats_files(stats_dir)
    for path in (files.indices, files.units, files.bootstrap_json):
        if not path.is_file():
            raise ConfigError(f"{path} does not exist (run `cxrbench evaluate` for this cell first)")
    boot = json.loads(files.bootstrap_json.read_text(encoding="utf-8"))
    units = pd.read_parquet(files.units).sort_values("position")
    # memory-mapped: a grid has a stats folder per cell, each up to B x 40,000 test images; a kernel call
    # reads one at a time
    indices = np.load(files.indices, mmap_mode="r")
    if indices.ndim != 2 or indices.shape[1] != len(units):
        raise ConfigError(f"{files.indices}: shape {indices.shape} does not match {len(units)} units in "
                          f"{files.units.name}")
    return CellStats(indices, units["unit_id"].astype(str).to_numpy(dtype=object), str(boot["resample_unit"]),
                     str(stats_dir))


# --- aggregation --------------------------------------------------------------------------------------


def _thresholds(run: ExternalRun, mode: str) -> np.ndarray:
    """Point-metric thresholds: A's validation thresholds, or (``study`` mode) refitted on the full test set."""
    if mode == "validation":
        return run.val_thresholds
    t = run.test
    return np.array([youden_threshold(t.targets[:, j], t.scores[:, j]) for j in range(len(run.labels))])


def _run_rows(run: ExternalRun, stats: CellStats, *, mode: str) -> tuple[pd.DataFrame, np.ndarray, set[str]]:
    """Point metrics and bootstrap summaries of one run on its test set: (rows, (B, L) AUROC, defined labels)."""
    context = f"{run.key.relpath()} on {run.test_dataset}: "
    unit_of_image = stats.unit_of_image(run.test, source=run.source)
    thr = _thresholds(run, mode)
    metrics = point_metrics(run.labels, run.test.targets, run.test.scores, thresholds=thr, context=context)
    result = bootstrap_runs(run.test.targets, run.test.scores, stats.indices, unit_of_image=unit_of_image,
                            thresholds=None if mode == "study" else thr)
    auc = result.auroc[:, 0, :]
    ok_cols = np.flatnonzero(defined_labels(run.test.targets))
    defined = {run.labels[j] for j in ok_cols}
    thr_metrics = {k: v[:, 0, :] for k, v in result.threshold_metrics().items()}
    series = {lab: {"auroc": auc[:, j], **{k: v[:, j] for k, v in thr_metrics.items()}}
              for j, lab in enumerate(run.labels)}
    series[MACRO] = {"auroc": macro_over(auc, ok_cols), **{k: macro_over(v, ok_cols) for k, v in thr_metrics.items()}}
    rows = []
    for lab, values in series.items():
        s = summarise(values["auroc"], context=f"{context}label {lab!r} AUROC: ") if (
            lab == MACRO or lab in defined) else summarise(values["auroc"][:0])
        row: dict[str, Any] = {"label": lab, "auroc_boot_mean": s["mean"], "auroc_boot_sd": s["sd"],
                               "auroc_ci_low": s["ci_low"], "auroc_ci_high": s["ci_high"],
                               "n_resamples_valid": s["n_resamples"]}
        for k in THRESHOLD_METRICS:
            v = values[k][~np.isnan(values[k])]
            row[f"{k}_boot_mean"] = float(v.mean()) if v.size else float("nan")
            row[f"{k}_boot_sd"] = float(v.std(ddof=1)) if v.size > 1 else float("nan")
        rows.append(row)
    frame = metrics.merge(pd.DataFrame(rows), on="label", how="left", validate="one_to_one")
    rule = {s.label: s.rule for s in run.shared}
    frame.insert(0, "rule", [rule.get(lab, "") for lab in frame["label"]])
    frame.insert(0, "level", np.where(frame["label"] == MACRO, "macro", "label"))
    for col, value in reversed([("init", run.key.init), ("train_dataset", run.key.dataset),
                                ("test_dataset", run.test_dataset), *_axes(run.key).items(),
                                ("in_domain", run.in_domain)]):
        frame.insert(0, col, value)
    frame["threshold_mode"] = mode
    frame["threshold_source"] = "test split (refitted, per resample in the bootstrap)" if mode == "study" else (
        f"validation split of {run.key.dataset}")
    return frame, auc, defined


def _check_paired(runs: list[ExternalRun]) -> None:
    first = runs[0]
    for run in runs[1:]:
        if not (np.array_equal(run.test.image_ids, first.test.image_ids)
                and np.array_equal(run.test.patient_ids, first.test.patient_ids)):
            raise PredictionError(f"{run.source} and {first.source}: test images (or their patients) differ; runs "
                                  "compared in one matrix cell must predict the same test set")


def _gap(
    run: ExternalRun, own: ExternalRun, ext_auc: np.ndarray, *, own_stats: CellStats,
) -> dict[str, Any] | None:
    """In-domain minus external macro AUROC on the labels the pair shares, per resample (None: no such label).

    The in-domain side maps the run's own test predictions to the shared labels (as external-predict maps
    B's) and resamples them with A's indices; the two test sets are independent samples, so resample b of A
    is paired with resample b of B.
    """
    targets, scores = to_shared(own.labels, own.test.targets, own.test.scores, run.shared, source=own.source)
    both = defined_labels(targets) & defined_labels(run.test.targets)
    cols = np.flatnonzero(both)
    if not cols.size:
        _logger.warning("%s on %s: no shared label with both classes in both test sets; no gap", run.key.relpath(),
                        run.test_dataset)
        return None
    res = bootstrap_runs(targets, scores, own_stats.indices,
                         unit_of_image=own_stats.unit_of_image(own.test, source=own.source),
                         thresholds=np.full(len(run.shared), np.nan))  # AUROC only: no threshold needed
    return {"labels": [run.labels[j] for j in cols], "in_domain": macro_over(res.auroc[:, 0, :], cols),
            "external": macro_over(ext_auc, cols)}


def _gap_rows(key: RunKey, parts: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per test dataset and one (``test_dataset`` = ``mean``) averaging them, resample by resample."""
    rows = []
    series = [(ds, p["in_domain"], p["external"], len(p["labels"])) for ds, p in parts.items()]
    if len(series) > 1:
        series.append(("mean", np.mean([s[1] for s in series], axis=0), np.mean([s[2] for s in series], axis=0),
                       int(np.sum([s[3] for s in series]))))
    for ds, in_dom, ext, n_labels in series:
        context = f"{key.relpath()} gap on {ds}: "
        g = summarise(in_dom - ext, context=context)
        i, e = summarise(in_dom, context=context), summarise(ext, context=context)
        rows.append({"init": key.init, "train_dataset": key.dataset, "test_dataset": ds, **_axes(key),
                     "n_test_datasets": len(parts) if ds == "mean" else 1, "n_labels": n_labels,
                     "in_domain_mean": i["mean"], "external_mean": e["mean"], "gap_mean": g["mean"],
                     "gap_sd": g["sd"], "gap_ci_low": g["ci_low"], "gap_ci_high": g["ci_high"],
                     "n_resamples_valid": g["n_resamples"]})
    if len(series) == 1:  # one test dataset: its row is also the mean
        rows.append({**rows[0], "test_dataset": "mean"})
    return rows


GAP_COLUMNS = ("init", "train_dataset", "test_dataset", *AXES, "n_test_datasets", "n_labels", "in_domain_mean",
               "external_mean", "gap_mean", "gap_sd", "gap_ci_low", "gap_ci_high", "n_resamples_valid")


def external_matrix(
    runs: Sequence[ExternalRun],
    stats: dict[CellKey, CellStats],
    *,
    inits: Sequence[str],
    evaluation: dict[str, Any],
) -> dict[str, pd.DataFrame]:
    """The external-validation statistics of every run (external and in-domain) on its test sets.

    Args:
        runs: every (run, test dataset) prediction; each run's own (diagonal) entry must be among them.
        stats: the bootstrap of each (test dataset, grid cell), keyed by its ``CellKey``.
        inits: initialisations in config order (order of the paired tests: Δ = earlier − later).
        evaluation: the config's ``evaluation`` section (``threshold_mode``, ``alpha``).

    Returns:
        ``external`` (metrics per run, test dataset and label | macro), ``tests`` (paired tests per matrix cell,
        Benjamini-Hochberg adjusted per contrast, grid cell and level over the train x test matrix) and ``gap``.

    Raises:
        ConfigError: a run's test cell has no stats, or a run has external predictions but no diagonal.
        PredictionError: runs of one matrix cell predict different test images.
    """
    mode = evaluation["threshold_mode"]
    order = {init: k for k, init in enumerate(inits)}
    unknown = sorted({r.key.init for r in runs} - set(order))
    if unknown:
        raise ConfigError(f"predictions of {unknown}: not among the configured initialisations {list(inits)}")
    cells: dict[tuple[CellKey, str], list[ExternalRun]] = {}
    for run in runs:
        cells.setdefault((run.key.cell, run.test_dataset), []).append(run)
    own = {r.key: r for r in runs if r.in_domain}
    missing = sorted({r.key.relpath().as_posix() for r in runs if r.key not in own})
    if missing:
        raise ConfigError(f"no in-domain predictions (--in-domain) for run(s) {missing}: the diagonal and the "
                          "generalisation gap need them")

    def cell_stats(cell: CellKey, dataset: str) -> CellStats:
        key = replace(cell, dataset=dataset)
        if key not in stats:
            raise ConfigError(f"no bootstrap statistics (--stats) for cell {key.relpath()}")
        return stats[key]

    frames, tests = [], []
    ext_auc: dict[tuple[RunKey, str], np.ndarray] = {}
    for (cell, test_ds), members in cells.items():
        members = sorted(members, key=lambda r: order[r.key.init])
        dup = [r.key.init for r in members if sum(m.key.init == r.key.init for m in members) > 1]
        if dup:
            raise ConfigError(f"{dup[0]!r} has two predictions for {cell.relpath()} on {test_ds}")
        _check_paired(members)
        st = cell_stats(cell, test_ds)
        per_run, defined = {}, {}
        for run in members:
            frame, auc, ok = _run_rows(run, st, mode=mode)
            frames.append(frame)
            per_run[run.key.init] = (run.labels, auc)
            defined[run.key.init] = ok
            ext_auc[(run.key, test_ds)] = auc
        t = compare_runs(per_run, defined)
        for col, value in reversed([("train_dataset", cell.dataset), ("test_dataset", test_ds),
                                    *_axes(cell).items()]):
            t.insert(0, col, value)
        tests.append(t)
    tests_df = pd.concat(tests, ignore_index=True)
    # One family per contrast, grid cell and level: the cells of one Δ matrix (adjust_bh's per_pair within a
    # grid cell), so adding a dataset or an arm never mixes in another contrast's tests.
    groups = [g for _, g in tests_df.groupby(list(AXES), sort=True)] or [tests_df]
    alpha = float(evaluation["alpha"])
    tests_out = pd.concat([adjust_bh(g, family="per_pair", alpha=alpha) for g in groups]).sort_index()
    tests_out = tests_out.reset_index(drop=True)

    gap_rows = []
    for key, diag in own.items():
        parts = {}
        for run in (r for r in runs if r.key == key and not r.in_domain):
            part = _gap(run, diag, ext_auc[(key, run.test_dataset)], own_stats=cell_stats(key.cell, key.dataset))
            if part is not None:
                parts[run.test_dataset] = part
        if parts:
            gap_rows += _gap_rows(key, parts)
    gap = pd.DataFrame(gap_rows, columns=list(GAP_COLUMNS))
    external = pd.concat(frames, ignore_index=True)
    return {"external": external, "tests": tests_out, "gap": gap}

