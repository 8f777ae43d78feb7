"""PadChest: ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz``.

``Labels`` is a Python-list-like string of findings; items are stripped (some carry a leading space)
and the empty item is ignored. The reported items (193 known) are kept compactly as the index's
``source_tokens`` column (``|``-joined): each item is a 0/1 source label (1 = reported; 0 = not
reported) that harmonise expands only for the items a label set uses. Rows are kept in the index but
marked for exclusion when ``Labels`` is missing (``labels_missing``), is the empty list ``['']``
(``labels_empty``: nothing reported) or reports ``exclude`` (``source_marked_exclude``: the radiologist
flagged the image as unusable); ``labels.padchest_drop`` decides in harmonise whether the last two are
dropped (the study kept them). ``MethodLabel`` (``Physician`` / ``RNN_model``) is kept as ``raw_MethodLabel``.
"""

from __future__ import annotations

import ast
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.datasets._io import (
    check_present,
    check_unique,
    finish_index,
    map_values,
    native_vocabulary,
    normalise_sex,
    parse_numeric,
    parse_token_lists,
    read_csv,
    token_indicators,
)

_logger = logging.getLogger(__name__)

DEFAULT_LABEL_FILE = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
_COLUMNS = ["ImageID", "ImageDir", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM", "Projection",
            "MethodLabel", "Labels", "StudyDate_DICOM"]
_VIEWS = {"PA": "PA", "AP": "AP", "AP_horizontal": "AP_SUPINE", "L": "LATERAL"}


def label_files(root: Path, entry: dict[str, Any]) -> list[Path]:
    """The single label CSV (``label_file`` overrides the name)."""
    return [root / entry.get("label_file", DEFAULT_LABEL_FILE)]


# quoted items without quotes/backslashes inside, separated by ", " or "," (adjacent literals like
# "'a''b'" would be concatenated by Python, so they are left to ast.literal_eval)
_SIMPLE_LIST = re.compile(r"\[(?:'[^'\\]*'(?:, ?'[^'\\]*')*)?\]")
_ITEM = re.compile(r"'([^'\\]*)'")


def _split_labels(text: str) -> list[str]:
    """``"['a', ' b']"`` -> ``['a', 'b']``; anything but a list of strings raises ValueError.

    The common form (quoted items without escapes) is split by a regular expression, four times
    faster than ``ast.literal_eval``, which handles everything else.
    """
    if _SIMPLE_LIST.fullmatch(text):
        return [v.strip() for v in _ITEM.findall(text)]
    value = ast.literal_eval(text)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("not a list of strings")
    return [v.strip() for v in value]


def read(root: Path, settings: dict[str, Any]) -> pd.DataFrame:
    """Index rows for every image row of the label CSV."""
    (path,) = label_files(root, settings["dataset"])
    df = read_csv(path, _COLUMNS)
    check_unique(df["ImageID"], path=path, column="ImageID")
    check_present(df, ["ImageID", "ImageDir", "PatientID"], path=path)
    vocab = native_vocabulary("padchest")
    tokens = parse_token_lists(df["Labels"], split=_split_labels, vocabulary=vocab, path=path, column="Labels")
    missing = tokens.isna().to_numpy()
    empty = tokens.eq("").fillna(False).to_numpy(dtype=bool)
    excluded = token_indicators(tokens, ["exclude"])[:, 0] == 1
    reason = np.select([missing, empty, excluded], ["labels_missing", "labels_empty", "source_marked_exclude"],
                       "").astype(object)
    reason[reason == ""] = None
    image_dir = parse_numeric(df["ImageDir"], path=path, column="ImageDir", integer=True).astype("int64").astype(str)
    birth = parse_numeric(df["PatientBirth"], path=path, column="PatientBirth")
    study_year = parse_numeric(df["StudyDate_DICOM"].str[:4], path=path, column="StudyDate_DICOM")
    base = {
        "image_id": df["ImageID"].str.removesuffix(".png"),
        "patient_id": df["PatientID"],
        "study_id": df["StudyID"],
        "source_path": pd.Series(image_dir, index=df.index, dtype="str") + "/" + df["ImageID"],
        "view_raw": df["Projection"],
        "view": map_values(df["Projection"].fillna(""), _VIEWS, path=path, column="Projection", default="OTHER"),
        "sex": normalise_sex(df["PatientSex_DICOM"]),
        "age_years": study_year - birth,
        "exclude_reason": reason,
    }
    raw: dict[str, Any] = {}
    raw["Labels"] = df["Labels"]
    raw["MethodLabel"] = df["MethodLabel"]
    return finish_index(base, raw, len(df), tokens=tokens)
