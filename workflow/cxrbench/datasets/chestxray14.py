"""NIH ChestX-ray14: ``Data_Entry_2017_v2020.csv`` (or the 2017 file) plus the official list files.

Source labels are the 15 ``Finding Labels`` tokens (``|``-separated; ``No Finding`` included): 1 when
the token is present, 0 when absent ("negative or not mentioned": the labels are NLP-mined).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.datasets._io import (
    DatasetFormatError,
    check_unique,
    finish_index,
    map_values,
    native_vocabulary,
    normalise_sex,
    parse_numeric,
    read_csv,
    tokens_to_matrix,
)

_logger = logging.getLogger(__name__)

DEFAULT_LABEL_FILE = "Data_Entry_2017_v2020.csv"
LIST_FILES = {"train": "train_val_list.txt", "test": "test_list.txt"}
_COLUMNS = ["Image Index", "Finding Labels", "Patient ID", "Patient Age", "Patient Gender", "View Position"]


def label_files(root: Path, entry: dict[str, Any]) -> list[Path]:
    """The label CSV (``label_file`` overrides the 2020 name) and the two official list files."""
    return [root / entry.get("label_file", DEFAULT_LABEL_FILE), *(root / f for f in LIST_FILES.values())]


def _official_split(root: Path, images: pd.Series) -> np.ndarray:
    """train/test from the list files; an image in both lists is an error, in neither -> None."""
    split = pd.Series(None, index=images.to_numpy(), dtype=object)
    seen: dict[str, str] = {}
    for name, fname in LIST_FILES.items():
        path = root / fname
        if not path.is_file():
            raise DatasetFormatError(f"{path}: official split list does not exist")
        listed = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        for img in listed:
            if img in seen:
                raise DatasetFormatError(f"{path}: image {img!r} is also listed in {LIST_FILES[seen[img]]}")
            seen[img] = name
        known = split.index.isin(listed)
        split[known] = name
        extra = len(listed) - int(known.sum())
        if extra:
            _logger.warning("%s lists %d image(s) absent from the label file (ignored)", path, extra)
    return split.to_numpy(dtype=object)


def read(root: Path, settings: dict[str, Any]) -> pd.DataFrame:
    """Index rows for every image of the label CSV."""
    entry = settings["dataset"]
    path = root / entry.get("label_file", DEFAULT_LABEL_FILE)
    df = read_csv(path, _COLUMNS)
    check_unique(df["Image Index"], path=path, column="Image Index")
    vocab = native_vocabulary("chestxray14")
    matrix, empty = tokens_to_matrix(
        df["Finding Labels"], split=lambda s: s.split("|"), vocabulary=vocab, path=path, column="Finding Labels"
    )
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
    return finish_index(base, raw, len(df), block=(vocab, matrix))
