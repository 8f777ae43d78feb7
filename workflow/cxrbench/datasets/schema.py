"""The declared schema of ``index.parquet`` (docs/contracts.md section 1), checked at write and read."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow
import pyarrow.parquet as pq

from cxrbench.datasets._io import INDEX_BASE_COLUMNS, TOKENS_COLUMN, VIEWS, token_indicators

_logger = logging.getLogger(__name__)

__all__ = ["INDEX_SCHEMA", "IndexSchemaError", "read_index", "source_values", "validate_index", "write_index"]

SPLITS = ("train", "val", "test")


class IndexSchemaError(ValueError):
    """An index table does not satisfy the declared schema."""


INDEX_SCHEMA = pa.DataFrameSchema(
    {
        "image_id": pa.Column(str, unique=True, nullable=False, description="stable image id within the dataset"),
        "patient_id": pa.Column(str, nullable=False, description="patient key (VinDr-CXR: the image id)"),
        "study_id": pa.Column(str, nullable=True),
        "source_path": pa.Column(str, nullable=False, description="POSIX path relative to the dataset root"),
        "view_raw": pa.Column(str, nullable=True),
        "view": pa.Column(str, pa.Check.isin(VIEWS), nullable=False),
        "split_official": pa.Column(str, pa.Check.isin(SPLITS), nullable=True),
        "sex": pa.Column(str, pa.Check.isin(("M", "F", "U")), nullable=False),
        "age_years": pa.Column(float, nullable=True),
        "exclude_reason": pa.Column(str, nullable=True),
        TOKENS_COLUMN: pa.Column(str, nullable=True, required=False,
                                 description="token-list datasets: reported source labels, '|'-joined"),
    },
    strict=False,  # raw_* columns are checked by name below (a pandera regex column per 193 PadChest items is slow)
    ordered=False,
    name="index",
)


def validate_index(df: pd.DataFrame, *, source: str) -> pd.DataFrame:
    """Validate ``df`` against :data:`INDEX_SCHEMA`; errors list every failing column/check."""
    extra = [c for c in df.columns if c not in INDEX_SCHEMA.columns and not c.startswith("raw_")]
    if extra:
        raise IndexSchemaError(f"{source}: unexpected index column(s) {extra} (only raw_* may be added)")
    try:
        return INDEX_SCHEMA.validate(df, lazy=True, inplace=True)  # no copy of the table
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases[["column", "check", "failure_case", "index"]].head(10).to_string(index=False)
        raise IndexSchemaError(f"{source}: index table violates the declared schema:\n{cases}") from None


def write_index(df: pd.DataFrame, path: Path) -> None:
    """Validate and write the index as Parquet (string columns as UTF-8, labels float32)."""
    df = validate_index(df, source=str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = [*INDEX_BASE_COLUMNS, *([TOKENS_COLUMN] if TOKENS_COLUMN in df else []),
               *(c for c in df if c.startswith("raw_"))]
    table = pyarrow.Table.from_pandas(df[columns], preserve_index=False)
    pq.write_table(table, path)


def read_index(path: Path) -> pd.DataFrame:
    """Read and validate an index Parquet written by :func:`write_index`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: index file does not exist (run `cxrbench index` first)")
    return validate_index(pd.read_parquet(path), source=str(path))


def source_values(index: pd.DataFrame, sources: Sequence[str]) -> dict[str, np.ndarray]:
    """``{source label: float32 1 / 0 / -1 / NaN per row}`` for each of ``sources`` the index carries.

    A source is its ``raw_<source>`` column or, in a token-list index (``source_tokens``), 1 when the
    row reports it and 0 when not (NaN where the row's label list is missing). Sources the index does
    not carry (e.g. VinDr global labels in the Kaggle variant) are left out.
    """
    out: dict[str, np.ndarray] = {}
    for s in dict.fromkeys(sources):
        if f"raw_{s}" in index:
            out[s] = index[f"raw_{s}"].to_numpy(dtype="float32")
    from_tokens = [s for s in dict.fromkeys(sources) if s not in out]
    if from_tokens and TOKENS_COLUMN in index:
        matrix = token_indicators(index[TOKENS_COLUMN], from_tokens)
        out.update({s: matrix[:, k] for k, s in enumerate(from_tokens)})
    return out
