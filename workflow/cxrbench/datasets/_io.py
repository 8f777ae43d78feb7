"""Shared pieces of the dataset adapters: strict CSV reading, value parsing and normalisation.

Every function that rejects input raises :class:`DatasetFormatError` naming the file, the data row
(1-based, header excluded) and the column, so a user can open the file at the offending place.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import yaml

from cxrbench.config import RESOURCES

_logger = logging.getLogger(__name__)

__all__ = [
    "INDEX_BASE_COLUMNS",
    "TOKENS_COLUMN",
    "TOKEN_SEPARATOR",
    "VIEWS",
    "DatasetFormatError",
    "check_present",
    "check_unique",
    "finish_index",
    "map_values",
    "native_vocabulary",
    "normalise_sex",
    "normalise_split",
    "parse_numeric",
    "parse_token_lists",
    "parse_tristate",
    "read_csv",
    "row_ref",
    "token_indicators",
]

VIEWS = ("PA", "AP", "AP_SUPINE", "LATERAL", "OTHER")
INDEX_BASE_COLUMNS = (
    "image_id",
    "patient_id",
    "study_id",
    "source_path",
    "view_raw",
    "view",
    "split_official",
    "sex",
    "age_years",
    "exclude_reason",
)
# Token-list datasets (ChestX-ray14 ``Finding Labels``, PadChest ``Labels``) keep their source labels
# compactly as one string column of distinct ``|``-joined tokens instead of one 0/1 column per
# vocabulary item (PadChest: 193): harmonise expands only the items a label set uses.
TOKENS_COLUMN = "source_tokens"
TOKEN_SEPARATOR = "|"


class DatasetFormatError(ValueError):
    """A native label file does not have the distributed format (missing column, bad value, duplicate)."""


def row_ref(file: Path | str, pos: int, column: str | None = None) -> str:
    """``file: data row N (line N+1), column 'C'`` for a 0-based data row position."""
    where = f"{file}: data row {pos + 1} (line {pos + 2})"
    return f"{where}, column {column!r}" if column is not None else where


@functools.cache
def _vocabularies() -> dict[str, list[str] | None]:
    with open(RESOURCES / "canonical_findings.sources.yaml", encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def native_vocabulary(adapter: str) -> list[str] | None:
    """The source labels an adapter accepts, spelt as distributed (None: any column is accepted)."""
    vocab = _vocabularies().get(adapter)
    return list(vocab) if vocab is not None else None


def read_csv(path: Path, required: Sequence[str], optional: Sequence[str] = ()) -> pd.DataFrame:
    """Read the named columns of a (possibly gzipped) CSV as strings; blanks become missing.

    pyarrow's reader is used because it is several times faster than pandas' on the 100k-row
    label files and reads only the columns asked for; values may span lines (PadChest reports).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(f"{path}: label file does not exist")
    try:
        header = pd.read_csv(path, nrows=0).columns
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetFormatError(f"{path}: cannot read the CSV header ({exc})") from exc
    missing = [c for c in required if c not in header]
    if missing:
        have = ", ".join(repr(c) for c in header[:40])
        raise DatasetFormatError(f"{path}: missing required column(s) {missing} (the file has: {have})")
    columns = list(dict.fromkeys([*required, *(c for c in optional if c in header)]))
    try:
        table = pacsv.read_csv(
            path,
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                include_columns=columns,
                column_types={c: pa.string() for c in columns},
                strings_can_be_null=True,
                quoted_strings_can_be_null=True,
            ),
        )
    except pa.ArrowInvalid as exc:
        raise DatasetFormatError(f"{path}: unparsable CSV ({exc})") from exc
    return table.to_pandas()


def _first_bad(bad: np.ndarray, values: pd.Series, path: Path, column: str, what: str) -> DatasetFormatError:
    pos = int(np.flatnonzero(bad)[0])
    return DatasetFormatError(
        f"{row_ref(path, pos, column)}: {what}, got {values.iloc[pos]!r} ({int(bad.sum())} such row(s))"
    )


def parse_numeric(values: pd.Series, *, path: Path, column: str, integer: bool = False) -> np.ndarray:
    """Strings to float64; blank -> NaN; anything unparsable is an error naming the first bad row.

    Each distinct string is parsed once (label columns hold a handful of distinct values).
    """
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    parsed = pd.to_numeric(pd.Series(uniques, dtype=object), errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    bad_u = np.isnan(parsed)
    if integer:
        bad_u |= ~np.isnan(parsed) & (parsed != np.round(parsed))
    if bad_u.any():
        bad = np.isin(codes, np.flatnonzero(bad_u))
        raise _first_bad(bad, values, path, column, "expected an integer" if integer else "expected a number")
    return np.append(parsed, np.nan)[codes]


def parse_tristate(
    values: pd.Series, *, path: Path, column: str, allowed: Iterable[float] = (1.0, 0.0, -1.0)
) -> np.ndarray:
    """Label strings to float32 1/0/-1/NaN (blank = NaN, 'not mentioned'); other values are errors."""
    out = parse_numeric(values, path=path, column=column)
    allowed_arr = np.asarray(sorted(allowed), dtype="float64")
    bad = ~np.isnan(out) & ~np.isin(out, allowed_arr)
    if bad.any():
        raise _first_bad(bad, values, path, column, f"expected one of {sorted(allowed)} or blank")
    return out.astype("float32")


def parse_token_lists(
    values: pd.Series,
    *,
    split: Callable[[str], list[str]],
    vocabulary: Sequence[str],
    path: Path,
    column: str,
) -> pd.Series:
    """Token-list strings -> the compact ``source_tokens`` form: distinct tokens ``|``-joined in order of
    first appearance, ``''`` for an empty list, missing (null) where the value is missing.

    Each distinct string is parsed once (ChestX-ray14 has ~800, PadChest ~29k distinct strings for
    112k/160k rows), which is what makes this fast. ``split`` raises ValueError on an unparsable
    string; unknown tokens are an error naming the first row that has them.
    """
    known = frozenset(vocabulary)
    if any(TOKEN_SEPARATOR in t for t in known):
        raise ValueError(f"a vocabulary item contains the token separator {TOKEN_SEPARATOR!r}")
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    joined: list[str | None] = []
    for u, text in enumerate(uniques.tolist()):  # plain str: iterating an Arrow-backed array is slow
        try:
            tokens = list(dict.fromkeys(t for t in split(text) if t != ""))
        except (ValueError, SyntaxError) as exc:
            raise _first_bad(codes == u, values, path, column, f"unparsable label list ({exc})") from None
        unknown = [t for t in tokens if t not in known]
        if unknown:
            raise _first_bad(codes == u, values, path, column, f"unknown label token(s) {unknown}")
        joined.append(TOKEN_SEPARATOR.join(tokens))
    joined.append(None)  # code -1 (missing) takes the last entry
    rows = pa.array(joined, pa.large_string()).take(pa.array(np.where(codes < 0, len(uniques), codes)))
    return rows.to_pandas().set_axis(values.index)


def arrow_strings(values: pd.Series) -> pa.Array:
    """A string Series as one contiguous pyarrow array (zero-copy for pandas' Arrow-backed ``str``)."""
    arr = pa.Array.from_pandas(values)
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    return arr if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type) else arr.cast(pa.large_string())


def token_indicators(tokens: pd.Series, names: Sequence[str]) -> np.ndarray:
    """``source_tokens`` -> N x K float32: 1 where ``names[k]`` is among the row's tokens, else 0;
    NaN for a row whose tokens are missing (the label list itself was missing).

    Vectorised over the exploded tokens: each distinct token is looked up once, then one scatter.
    """
    arr = arrow_strings(tokens)
    # filled K x N and returned transposed, so that each source's column is contiguous
    out = np.zeros((len(names), len(arr)), dtype="float32")
    out[:, arr.is_null().to_numpy(zero_copy_only=False)] = np.nan
    lists = pc.split_pattern(arr, TOKEN_SEPARATOR)
    flat = pc.list_flatten(lists)
    if len(flat) == 0 or not names:
        return out.T
    rows = pc.list_parent_indices(lists).to_numpy()
    enc = pc.dictionary_encode(flat)
    column_of = {name: k for k, name in enumerate(names)}
    lut = np.array([column_of.get(t, -1) for t in enc.dictionary.to_pylist()], dtype=np.int64)
    cols = lut[enc.indices.to_numpy()]
    hit = cols >= 0
    out[cols[hit], rows[hit]] = 1.0
    return out.T


def normalise_sex(values: pd.Series) -> np.ndarray:
    """Any spelling of male/female (M, Male, F, Female, W) -> M/F; everything else (O, Unknown, blank) -> U."""
    first = values.fillna("").astype(str).str.strip().str[:1].str.upper()
    return np.select([first == "M", first.isin(["F", "W"])], ["M", "F"], "U").astype(object)


_SPLITS = {"train": "train", "val": "val", "valid": "val", "validate": "val", "validation": "val", "test": "test"}


def normalise_split(values: pd.Series, *, path: Path, column: str) -> np.ndarray:
    """Official split values (train / valid / validate / val / test) -> train / val / test; blank -> None."""
    return map_values(values, _SPLITS, path=path, column=column, lower=True)


def map_values(
    values: pd.Series,
    mapping: Mapping[str, str],
    *,
    path: Path,
    column: str,
    lower: bool = False,
    default: str | None = None,
    allow_missing: bool = True,
) -> np.ndarray:
    """Map strings through ``mapping``; unmapped values -> ``default`` or, if None, an error naming the row."""
    keys = values.str.strip().str.lower() if lower else values.str.strip()
    out = keys.map(mapping)
    unmapped = out.isna() & keys.notna()
    if unmapped.any():
        if default is None:
            raise _first_bad(unmapped.to_numpy(), values, path, column, f"expected one of {sorted(set(mapping))}")
        out = out.mask(unmapped, default)
    if not allow_missing and keys.isna().any():
        raise _first_bad(keys.isna().to_numpy(), values, path, column, "value is missing")
    return out.to_numpy(dtype=object, na_value=None)


def check_present(df: pd.DataFrame, columns: Iterable[str], *, path: Path | str) -> None:
    """A missing value in any of ``columns`` (checked in order) is an error naming its first row."""
    for column in columns:
        missing = df[column].isna().to_numpy()
        if missing.any():
            raise DatasetFormatError(f"{row_ref(path, int(np.flatnonzero(missing)[0]), column)}: value is missing")


def check_unique(ids: pd.Series, *, path: Path | str, column: str) -> None:
    """Duplicate image ids are an error naming both rows."""
    dup = ids.duplicated(keep=False).to_numpy()
    if dup.any():
        first = ids[dup].iloc[0]
        rows = np.flatnonzero((ids == first).to_numpy())[:2]
        raise DatasetFormatError(
            f"{path}: duplicate image id {first!r} in column {column!r} at data rows "
            f"{', '.join(str(r + 1) for r in rows)} ({int(ids.duplicated().sum())} duplicate(s) in all)"
        )


def finish_index(
    base: Mapping[str, object],
    raw: Mapping[str, object],
    n: int,
    *,
    tokens: pd.Series | None = None,
) -> pd.DataFrame:
    """Assemble an index DataFrame: the contract's base columns in order, then ``source_tokens``
    (token-list datasets, from :func:`parse_token_lists`), then ``raw_*`` columns."""
    cols: dict[str, object] = {}
    for name in INDEX_BASE_COLUMNS:
        value = base.get(name)
        if value is None:  # a dataset without this field: age NaN, sex unknown, others null
            value = {"age_years": np.full(n, np.nan), "sex": np.full(n, "U", dtype=object)}.get(
                name, np.full(n, None, dtype=object)
            )
        cols[name] = value.reset_index(drop=True) if isinstance(value, pd.Series) else value
    df = pd.DataFrame(cols)
    for name in INDEX_BASE_COLUMNS:
        if name != "age_years":
            df[name] = df[name].astype("str")
    df["age_years"] = df["age_years"].astype("float64")
    parts = [df]
    if tokens is not None:
        parts.append(pd.DataFrame({TOKENS_COLUMN: tokens.reset_index(drop=True)}))
    # float32 label columns as one 2-D block: a frame built from many separate arrays spends time
    # consolidating them
    floats = {f"raw_{k}": v for k, v in raw.items() if isinstance(v, np.ndarray) and v.dtype == np.float32}
    others = {f"raw_{k}": v for k, v in raw.items() if f"raw_{k}" not in floats}
    if floats:
        parts.append(pd.DataFrame(floats))
    if others:
        parts.append(pd.DataFrame({k: v.reset_index(drop=True) if isinstance(v, pd.Series) else v
                                   for k, v in others.items()}).astype("str"))
    out = pd.concat(parts, axis=1)
    if out.columns.duplicated().any():
        raise ValueError(f"duplicate index column(s): {list(out.columns[out.columns.duplicated()])}")
    return out
