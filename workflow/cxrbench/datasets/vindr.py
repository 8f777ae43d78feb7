"""VinDr-CXR and Pedi-CXR (VinDr-PCXR): ``annotations/image_labels_{train,test}.csv``.

The training file has one row per (image, radiologist); readers are merged per label by
``reader_merge``: ``majority`` (more than half of the image's readers positive) or ``any`` (at least
one). The test file holds one consensus row per image (merged the same way if it repeats an image).
Blank cells count as 0: readers assessed every label (public loaders fill the test file's blanks
with 0). The Kaggle "VinBigData" ``train.csv`` (one row per box, ``class_name``) is read when
``label_file`` names it; its 14 box classes + ``No finding`` are set, the other labels have no column, and
its images all belong to train (the Kaggle test labels were never released).

No patient identifier is published, so ``patient_id`` is the image id: a re-split of train cannot be
guaranteed patient-disjoint (documented in docs/labels.md).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.datasets._io import (
    DatasetFormatError,
    check_present,
    finish_index,
    native_vocabulary,
    parse_tristate,
    read_csv,
)

_logger = logging.getLogger(__name__)

FILES = {"train": "annotations/image_labels_train.csv", "test": "annotations/image_labels_test.csv"}
_ALIASES = {"Other disease": "Other diseases"}  # the test file's spelling (datasets.md section 4.2)
_ID_COLUMNS = ("image_id", "rad_id")


def label_files(root: Path, entry: dict[str, Any]) -> list[Path]:
    """The two image-label files, or the single Kaggle ``train.csv`` named by ``label_file``."""
    if "label_file" in entry:
        return [root / entry["label_file"]]
    return [root / f for f in FILES.values()]


def _merge(df: pd.DataFrame, labels: list[str], rule: str) -> pd.DataFrame:
    """Per image: count positive readers per label, then apply the merge rule -> 0/1 float32."""
    grouped = df.groupby("image_id", sort=False)
    positives = grouped[labels].sum()
    readers = grouped.size().to_numpy()[:, None]
    if rule == "majority":
        merged = 2 * positives.to_numpy() > readers
    elif rule == "any":
        merged = positives.to_numpy() > 0
    else:
        raise ValueError(f"reader_merge must be 'majority' or 'any', got {rule!r}")
    out = pd.DataFrame(merged.astype("float32"), index=positives.index, columns=labels)
    out["n_readers"] = readers[:, 0].astype("float32")
    return out


def _read_image_labels(path: Path, adapter: str) -> tuple[pd.DataFrame, list[str]]:
    header = pd.read_csv(path, nrows=0).columns if path.is_file() else []
    columns = [_ALIASES.get(c, c) for c in header if c not in _ID_COLUMNS]
    vocab = native_vocabulary(adapter)
    if vocab is not None:
        unknown = [c for c in columns if c not in vocab]
        if unknown:
            raise DatasetFormatError(f"{path}: unknown label column(s) {unknown} (known: {vocab})")
    df = read_csv(path, ["image_id"], optional=[c for c in header if c not in _ID_COLUMNS] + ["rad_id"])
    df = df.rename(columns=_ALIASES)
    labels = [c for c in df.columns if c not in _ID_COLUMNS]
    for label in labels:
        df[label] = np.nan_to_num(parse_tristate(df[label], path=path, column=label, allowed=(0.0, 1.0)), nan=0.0)
    check_present(df, ["image_id"], path=path)
    return df, labels


def _read_kaggle(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """Box rows -> one 0/1 row per (image, reader) over the 15 Kaggle classes."""
    df = read_csv(path, ["image_id", "class_name", "rad_id"])
    vocab = native_vocabulary("vindr")
    bad = ~df["class_name"].isin(vocab).to_numpy()
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise DatasetFormatError(
            f"{path}: data row {pos + 1}, column 'class_name': unknown class {df['class_name'].iloc[pos]!r}"
        )
    table = pd.crosstab([df["image_id"], df["rad_id"]], df["class_name"]).clip(upper=1).astype("float32")
    return table.reset_index(), list(table.columns)


def read(root: Path, settings: dict[str, Any], adapter: str = "vindr") -> pd.DataFrame:
    """Index rows for every image of the training and test label files, readers merged."""
    entry = settings["dataset"]
    rule = entry.get("reader_merge", "majority")
    vocab = native_vocabulary(adapter)
    parts = []
    files = label_files(root, entry)
    splits = ["train"] if "label_file" in entry else list(FILES)
    for path, split in zip(files, splits, strict=True):
        if "label_file" in entry:
            df, labels = _read_kaggle(path)
        else:
            df, labels = _read_image_labels(path, adapter)
        merged = _merge(df, labels, rule)
        merged["split"] = split
        merged["subdir"] = split
        merged["file"] = str(path)
        parts.append(merged)
    all_labels = vocab if vocab is not None else list(dict.fromkeys(c for p in parts for c in p.columns
                                                                    if c not in ("n_readers", "split", "subdir", "file")))
    df = pd.concat(parts)
    dup = df.index.duplicated(keep=False)
    if dup.any():
        first = df.index[dup][0]
        raise DatasetFormatError(f"image id {first!r} appears in both {' and '.join(map(str, files))}")
    ids = df.index.to_numpy(dtype=object)
    n = len(df)
    base = {
        "image_id": ids,
        "patient_id": ids,  # no patient identifier is published
        "source_path": (df["subdir"] + "/" + df.index.to_series() + ".dicom").to_numpy(dtype=object),
        "view": np.full(n, "PA", dtype=object),  # posteroanterior by design
        "split_official": df["split"].to_numpy(dtype=object),
    }
    # a label the files do not carry (the Kaggle variant's 6 global + 8 rare labels) gets no column:
    # harmonisation then reports the finding as not assessed (NaN), never 0
    raw: dict[str, Any] = {label: df[label].to_numpy(dtype="float32") for label in all_labels if label in df}
    raw["n_readers"] = df["n_readers"].to_numpy(dtype="float32")
    return finish_index(base, raw, n)
