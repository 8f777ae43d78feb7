"""UKA-CXR (private): ``master_list.csv`` with integer severity grades per finding.

A graded finding is positive (1) when its grade is in ``labels.uka_positive_grades`` (the study: 3
and 4), otherwise 0; a blank grade stays NaN. ``healthy`` is already 0/1. Left and right stay separate
source labels (the canonical map merges them). The grades themselves are kept as ``raw_grade_<col>``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.datasets._io import (
    check_present,
    check_unique,
    finish_index,
    native_vocabulary,
    normalise_sex,
    normalise_split,
    parse_numeric,
    parse_tristate,
    read_csv,
)

_logger = logging.getLogger(__name__)

DEFAULT_LABEL_FILE = "master_list.csv"


def label_files(root: Path, entry: dict[str, Any]) -> list[Path]:
    """The master list (``label_file`` overrides the name)."""
    return [root / entry.get("label_file", DEFAULT_LABEL_FILE)]


def read(root: Path, settings: dict[str, Any]) -> pd.DataFrame:
    """Index rows for every image of the master list; grades binarised by the configured positive grades."""
    (path,) = label_files(root, settings["dataset"])
    positive = np.asarray(settings.get("labels", {}).get("uka_positive_grades", [3, 4]), dtype="float64")
    vocab = native_vocabulary("uka")
    graded = [c for c in vocab if c != "healthy"]
    df = read_csv(path, ["image_id", "split", "subset", "subject_id", *vocab], optional=["age", "patient_sex"])
    check_unique(df["image_id"], path=path, column="image_id")
    check_present(df, ["image_id", "subject_id", "subset"], path=path)
    raw: dict[str, Any] = {}
    grades = {}
    for col in graded:
        g = parse_numeric(df[col], path=path, column=col, integer=True)
        grades[col] = g.astype("float32")
        raw[col] = np.where(np.isnan(g), np.nan, np.isin(g, positive)).astype("float32")
    raw["healthy"] = parse_tristate(df["healthy"], path=path, column="healthy", allowed=(0.0, 1.0))
    for col, g in grades.items():
        raw[f"grade_{col}"] = g
    base = {
        "image_id": df["image_id"].to_numpy(dtype=object),
        "patient_id": df["subject_id"].to_numpy(dtype=object),
        "source_path": ("images/" + df["subset"] + "/" + df["image_id"] + ".dcm").to_numpy(dtype=object),
        "view": np.full(len(df), "AP", dtype=object),  # bedside frontal AP radiographs
        "split_official": normalise_split(df["split"], path=path, column="split"),
        "sex": normalise_sex(df["patient_sex"]) if "patient_sex" in df else None,
        "age_years": parse_numeric(df["age"], path=path, column="age") if "age" in df else None,
    }
    return finish_index(base, raw, len(df))
