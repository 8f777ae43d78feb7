"""Reading and checking ``predictions.parquet`` (docs/contracts.md §4) into dense per-split arrays."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa

_logger = logging.getLogger(__name__)

__all__ = ["PREDICTIONS_SCHEMA", "PredictionError", "RunPredictions", "SplitArrays", "from_frame", "read_predictions"]


class PredictionError(ValueError):
    """A predictions file breaks the contract; the message names the file and what is wrong."""


PREDICTIONS_SCHEMA = pa.DataFrameSchema(
    {
        "split": pa.Column(str, pa.Check.isin(["val", "test"])),
        "image_id": pa.Column(str),
        "patient_id": pa.Column(str),
        "label": pa.Column(str),
        # NaN = masked for this label (e.g. U-ignore); anything else must be exactly 0 or 1.
        "target": pa.Column(float, pa.Check.isin([0.0, 1.0]), nullable=True),
        "score": pa.Column(float, pa.Check.in_range(0.0, 1.0)),
    },
    unique=["split", "image_id", "label"],
    coerce=True,
    strict=False,
)


@dataclass(frozen=True)
class SplitArrays:
    """One split of one run as dense arrays, rows sorted by ``image_id``.

    ``targets`` is float64 with NaN for masked entries; ``scores`` float64 probabilities.
    """

    image_ids: np.ndarray  # (N,) object
    patient_ids: np.ndarray  # (N,) object
    targets: np.ndarray  # (N, L)
    scores: np.ndarray  # (N, L)


@dataclass(frozen=True)
class RunPredictions:
    """Validation and test predictions of one (initialisation, dataset) run."""

    labels: tuple[str, ...]
    val: SplitArrays | None
    test: SplitArrays


def _dense(df: pd.DataFrame, labels: list[str], *, source: str, split: str) -> SplitArrays:
    """Pivot one split's long rows to (image x label) arrays; every image must carry every label."""
    patients = df.groupby("image_id", sort=True)["patient_id"].agg(["nunique", "first"])
    bad = patients.index[patients["nunique"] > 1]
    if len(bad):
        raise PredictionError(f"{source}: split {split!r}: image {bad[0]!r} has more than one patient_id")
    targets = df.pivot(index="image_id", columns="label", values="target").reindex(columns=labels).sort_index()
    scores = df.pivot(index="image_id", columns="label", values="score").reindex(columns=labels).sort_index()
    missing = scores.isna().to_numpy()
    if missing.any():
        row, col = np.argwhere(missing)[0]
        raise PredictionError(
            f"{source}: split {split!r}: image {scores.index[row]!r} has no row for label {labels[col]!r} "
            "(every image needs a score for every label of the run)"
        )
    return SplitArrays(
        image_ids=scores.index.to_numpy(dtype=object),
        patient_ids=patients.loc[scores.index, "first"].to_numpy(dtype=object),
        targets=targets.to_numpy(dtype=np.float64),
        scores=scores.to_numpy(dtype=np.float64),
    )


def from_frame(df: pd.DataFrame, *, source: str = "<predictions>") -> RunPredictions:
    """Validate long-format predictions and return dense arrays; labels keep their first-appearance order."""
    missing = [c for c in PREDICTIONS_SCHEMA.columns if c not in df.columns]
    if missing:
        raise PredictionError(f"{source}: missing column(s) {', '.join(missing)}")
    try:
        # a positional index makes "row N" in messages the row of the file
        df = PREDICTIONS_SCHEMA.validate(df[list(PREDICTIONS_SCHEMA.columns)].reset_index(drop=True), lazy=True)
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases.head(5)
        lines = [
            f"column {r.column!r}: {r.check} failed (row {r.index}, value {r.failure_case!r})"
            for r in cases.itertuples()
        ]
        raise PredictionError(f"{source}: predictions break the contract:\n  " + "\n  ".join(lines)) from None
    labels = list(dict.fromkeys(df["label"]))
    if "test" not in set(df["split"]):
        raise PredictionError(f"{source}: no rows with split 'test'")
    splits = {name: _dense(part, labels, source=source, split=name) for name, part in df.groupby("split")}
    return RunPredictions(labels=tuple(labels), val=splits.get("val"), test=splits["test"])


def read_predictions(path: str | Path) -> RunPredictions:
    """Read one run's ``predictions.parquet``."""
    path = Path(path)
    if not path.is_file():
        raise PredictionError(f"{path}: predictions file does not exist")
    run = from_frame(pd.read_parquet(path), source=str(path))
    _logger.info("%s: %d labels, %d test images", path, len(run.labels), len(run.test.image_ids))
    return run
