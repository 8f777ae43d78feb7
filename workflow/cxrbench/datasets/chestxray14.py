"""NIH ChestX-ray14: ``Data_Entry_2017_v2020.csv`` (or the 2017 file) plus the official list files.

Source labels are the 15 ``Finding Labels`` tokens (``|``-separated; ``No Finding`` included): 1 when
the token is present, 0 when absent ("negative or not mentioned": the labels are NLP-mined), kept as
the index's ``source_tokens`` column.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from cxrbench.datasets._io import (
    DatasetFormatError,
    arrow_strings,
    check_unique,
    finish_index,
    map_values,
    native_vocabulary,
    normalise_sex,
    parse_numeric,
    parse_token_lists,
    read_csv,
)

_logger = logging.getLogger(__name__)

DEFAULT_LABEL_FILE = "Data_Entry_2017_v2020.csv"
LIST_FILES = {"train": "train_val_list.txt", "test": "test_list.txt"}
_COLUMNS = ["Image Index", "Finding Labels", "Patient ID", "Patient Age", "Patient Gender", "View Position"]


def label_files(root: Path, entry: dict[str, Any]) -> list[Path]:
    """The label CSV (``label_file`` overrides the 2020 name) and the two official list files."""
    return [root / entry.get("label_file", DEFAULT_LABEL_FILE), *(root / f for f in LIST_FILES.values())]


def _official_split(root: Path, images: pd.Series) -> np.ndarray:
    """train/test from the list files; an image listed twice (in both lists) is an error, in neither -> None.

    Vectorised with pyarrow hash lookups (``pandas`` ``isin`` with a 86k-item list converts each item
    to a scalar in Python).
    """
    names: list[str] = []
    listed: list[str] = []
    for name, fname in LIST_FILES.items():
        path = root / fname
        if not path.is_file():
            raise DatasetFormatError(f"{path}: official split list does not exist")
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        items = [line for line in lines if line]
        listed += items
        names += [name] * len(items)
    listed_s = pd.Series(listed, dtype=object)
    dup = listed_s.duplicated().to_numpy()
    if dup.any():
        pos = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero((listed_s == listed_s.iloc[pos]).to_numpy())[0])
        raise DatasetFormatError(f"{root / LIST_FILES[names[pos]]}: image {listed[pos]!r} is also listed in "
                                 f"{LIST_FILES[names[first]]}")
    listed_arr = pa.array(listed, pa.large_string())
    image_arr = arrow_strings(images)
    found = pc.is_in(listed_arr, value_set=image_arr).to_numpy(zero_copy_only=False)
    list_of = np.asarray(names, dtype=object)
    for name, fname in LIST_FILES.items():
        extra = int((~found[list_of == name]).sum())
        if extra:
            _logger.warning("%s lists %d image(s) absent from the label file (ignored)", root / fname, extra)
    at = pc.index_in(image_arr, value_set=listed_arr).fill_null(-1).to_numpy(zero_copy_only=False)
    return np.append(list_of, np.array([None], dtype=object))[at]  # -1 (in neither list): the trailing None


def read(root: Path, settings: dict[str, Any]) -> pd.DataFrame:
    """Index rows for every image of the label CSV."""
    entry = settings["dataset"]
    path = root / entry.get("label_file", DEFAULT_LABEL_FILE)
    df = read_csv(path, _COLUMNS)
    check_unique(df["Image Index"], path=path, column="Image Index")
    vocab = native_vocabulary("chestxray14")
    tokens = parse_token_lists(df["Finding Labels"], split=lambda s: s.split("|"), vocabulary=vocab, path=path,
                               column="Finding Labels")
    empty = tokens.fillna("").eq("").to_numpy()
    if empty.any():  # every NIH row carries at least "No Finding"
        pos = int(np.flatnonzero(empty)[0])
        raise DatasetFormatError(f"{path}: data row {pos + 1}, column 'Finding Labels': no label token")
    pid = parse_numeric(df["Patient ID"], path=path, column="Patient ID", integer=True)
    if np.isnan(pid).any():
        raise DatasetFormatError(f"{path}: column 'Patient ID' has {int(np.isnan(pid).sum())} blank value(s)")
    base = {
        "image_id": df["Image Index"].str.removesuffix(".png"),
        "patient_id": pid.astype("int64").astype(str).astype(object),
        "source_path": "images/" + df["Image Index"],
        "view_raw": df["View Position"],
        "view": map_values(df["View Position"], {"PA": "PA", "AP": "AP"}, path=path, column="View Position",
                           default="OTHER"),
        "split_official": _official_split(root, df["Image Index"]),
        "sex": normalise_sex(df["Patient Gender"]),
        "age_years": parse_numeric(df["Patient Age"], path=path, column="Patient Age"),
    }
    raw: dict[str, Any] = {}
    raw["Finding Labels"] = df["Finding Labels"]
    return finish_index(base, raw, len(df), tokens=tokens)
