"""MIMIC-CXR-JPG: the metadata, CheXpert-labeller and split CSVs (``mimic-cxr-2.0.0-*.csv.gz``).

One index row per image of the metadata file. The study-level labels (1 / 0 / -1 / blank = NaN) are
broadcast to every image of the study; images whose study has no label row are kept in the index
with ``exclude_reason = 'no_study_labels'``. The official split value ``validate`` becomes ``val``.
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
    check_unique,
    finish_index,
    map_values,
    native_vocabulary,
    normalise_split,
    parse_numeric,
    parse_tristate,
    read_csv,
    row_ref,
)

_logger = logging.getLogger(__name__)

METADATA = "mimic-cxr-2.0.0-metadata.csv.gz"
LABELS = "mimic-cxr-2.0.0-chexpert.csv.gz"
SPLIT = "mimic-cxr-2.0.0-split.csv.gz"
_VIEWS = {"PA": "PA", "AP": "AP", "LATERAL": "LATERAL", "LL": "LATERAL"}


def label_files(root: Path, entry: dict[str, Any]) -> list[Path]:
    """The metadata, CheXpert-label and split files (``label_file`` replaces the label file, e.g. NegBio)."""
    return [root / METADATA, root / entry.get("label_file", LABELS), root / SPLIT]


def _ids(df: pd.DataFrame, path: Path, columns: list[str]) -> None:
    """Subject and study ids must be integers (they build the image path)."""
    for col in columns:
        parse_numeric(df[col], path=path, column=col, integer=True)
        check_present(df, [col], path=path)


def read(root: Path, settings: dict[str, Any]) -> pd.DataFrame:
    """Index rows for every image of the metadata file, with study labels and the official split."""
    entry = settings["dataset"]
    vocab = native_vocabulary("mimic")
    meta_path, label_path, split_path = label_files(root, entry)
    meta = read_csv(meta_path, ["dicom_id", "subject_id", "study_id", "ViewPosition"])
    _ids(meta, meta_path, ["subject_id", "study_id"])
    check_unique(meta["dicom_id"], path=meta_path, column="dicom_id")

    labels = read_csv(label_path, ["subject_id", "study_id", *vocab])
    _ids(labels, label_path, ["subject_id", "study_id"])
    dup = labels.duplicated(["subject_id", "study_id"]).to_numpy()
    if dup.any():
        pos = int(np.flatnonzero(dup)[0])
        raise DatasetFormatError(f"{row_ref(label_path, pos, 'study_id')}: second label row for the same study")
    values = {label: parse_tristate(labels[label], path=label_path, column=label) for label in vocab}
    study_key = labels["subject_id"] + "/" + labels["study_id"]
    lookup = pd.Index(study_key).get_indexer(meta["subject_id"] + "/" + meta["study_id"])
    has_labels = lookup >= 0
    raw = {}
    for label, v in values.items():
        col = np.full(len(meta), np.nan, dtype="float32")
        col[has_labels] = v[lookup[has_labels]]
        raw[label] = col

    split = read_csv(split_path, ["dicom_id", "split"])
    check_unique(split["dicom_id"], path=split_path, column="dicom_id")
    split_values = pd.Series(normalise_split(split["split"], path=split_path, column="split"),
                             index=split["dicom_id"].to_numpy())
    official = split_values.reindex(meta["dicom_id"].to_numpy()).to_numpy(dtype=object)
    n_unsplit = int(pd.isna(official).sum())
    if n_unsplit:
        _logger.warning("%s: %d image(s) of the metadata file have no split row", split_path, n_unsplit)

    sub, study, dicom = meta["subject_id"], meta["study_id"], meta["dicom_id"]
    source = "files/p" + sub.str[:2] + "/p" + sub + "/s" + study + "/" + dicom + ".jpg"
    base = {
        "image_id": dicom.to_numpy(dtype=object),
        "patient_id": sub.to_numpy(dtype=object),
        "study_id": study.to_numpy(dtype=object),
        "source_path": source.to_numpy(dtype=object),
        "view_raw": meta["ViewPosition"].to_numpy(dtype=object),
        "view": map_values(meta["ViewPosition"].fillna(""), _VIEWS, path=meta_path, column="ViewPosition",
                           default="OTHER"),
        "split_official": official,
        "exclude_reason": np.where(has_labels, None, "no_study_labels").astype(object),
    }
    return finish_index(base, raw, len(meta))
