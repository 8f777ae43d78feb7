"""The declared schema of ``labels.parquet`` (docs/contracts.md section 2), checked at write and read."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pandera.pandas as pa
import pyarrow
import pyarrow.parquet as pq

from cxrbench.datasets import VIEWS
from cxrbench.labels.splits import patients_in_several_splits

_logger = logging.getLogger(__name__)

__all__ = [
    "BASE_COLUMNS",
    "METADATA_KEY",
    "LabelsSchemaError",
    "labels_schema",
    "read_labels",
    "validate_labels",
    "write_labels",
]

METADATA_KEY = b"cxrbench.labels"
BASE_COLUMNS = ("dataset", "image_id", "patient_id", "study_id", "split", "split_source", "view", "sex", "age_years",
                "source_path")


class LabelsSchemaError(ValueError):
    """A labels table does not satisfy the declared schema."""


def _no_patient_in_two_splits(df: pd.DataFrame) -> bool:
    return len(patients_in_several_splits(df["patient_id"], df["split"])) == 0


def _binary_or_nan(values: pd.Series) -> pd.Series:
    # vectorised comparisons: Check.isin hashes every float value (a third of the validation time)
    return values.isna() | values.eq(0.0) | values.eq(1.0)


def labels_schema(labels: Sequence[str]) -> pa.DataFrameSchema:
    """Schema for a labels table whose label set is ``labels`` (canonical names, in order)."""
    columns = {
        "dataset": pa.Column(str, nullable=False),
        "image_id": pa.Column(str, unique=True, nullable=False),
        "patient_id": pa.Column(str, nullable=False),
        "study_id": pa.Column(str, nullable=True),
        "split": pa.Column(str, pa.Check.isin(("train", "val", "test")), nullable=False),
        "split_source": pa.Column(str, pa.Check.isin(("official", "derived")), nullable=False),
        "view": pa.Column(str, pa.Check.isin(VIEWS), nullable=False),
        "sex": pa.Column(str, pa.Check.isin(("M", "F", "U")), nullable=False),
        "age_years": pa.Column(float, nullable=True),
        "source_path": pa.Column(str, nullable=False),
    }
    for label in labels:
        columns[f"y_{label}"] = pa.Column("float32", pa.Check(_binary_or_nan, name="isin", error="isin([0.0, 1.0])"),
                                          nullable=True,
                                          description=f"canonical finding {label}: 1 / 0 / NaN")
    return pa.DataFrameSchema(
        columns,
        checks=pa.Check(_no_patient_in_two_splits, error="a patient appears in more than one split"),
        strict=False,  # raw_* audit columns are checked by name in validate_labels
        name="labels",
    )


def validate_labels(df: pd.DataFrame, labels: Sequence[str], *, source: str) -> pd.DataFrame:
    """Validate ``df`` for the ordered label set ``labels``; the ``y_`` columns must be exactly those."""
    y_cols = [c for c in df.columns if c.startswith("y_")]
    if y_cols != [f"y_{label}" for label in labels]:
        raise LabelsSchemaError(f"{source}: label columns {y_cols} do not match the label set {list(labels)}")
    extra = [c for c in df.columns if c not in BASE_COLUMNS and not c.startswith(("y_", "raw_"))]
    if extra:
        raise LabelsSchemaError(f"{source}: unexpected column(s) {extra} (only raw_* may be added)")
    try:
        return labels_schema(labels).validate(df, lazy=True, inplace=True)  # no copy of the table
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases[["column", "check", "failure_case", "index"]].head(10).to_string(index=False)
        raise LabelsSchemaError(f"{source}: labels table violates the declared schema:\n{cases}") from None


def write_labels(df: pd.DataFrame, labels: Sequence[str], path: Path) -> None:
    """Validate and write ``labels.parquet``; the label order goes into the Parquet metadata."""
    df = validate_labels(df, labels, source=str(path))
    table = pyarrow.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[METADATA_KEY] = json.dumps(list(labels)).encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata(meta), path)


def read_labels(path: Path | str) -> tuple[pd.DataFrame, list[str]]:
    """Read and validate ``labels.parquet`` -> (table, ordered canonical label names)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: labels file does not exist (run `cxrbench harmonise` first)")
    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    if METADATA_KEY not in meta:
        raise LabelsSchemaError(f"{path}: Parquet metadata lacks {METADATA_KEY.decode()!r} (not written by cxrbench?)")
    labels = json.loads(meta[METADATA_KEY])
    return validate_labels(table.to_pandas(), labels, source=str(path)), labels
