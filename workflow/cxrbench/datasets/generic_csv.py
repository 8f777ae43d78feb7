"""A generic adapter for a new dataset: one CSV, columns named in the config.

``datasets.<name>.columns`` maps roles to column names: ``label_file`` (relative to the root,
required), ``image_id`` (required), ``path`` (image path relative to the root, required),
``patient_id`` (default: the image id), ``study_id``, ``split`` (train / val / valid / validate / test),
``view`` (PA, AP, AP_SUPINE / AP_horizontal, LATERAL / L / LL, else OTHER), ``sex``, ``age`` and
``labels`` as ``{canonical finding: source column}``. Label values are 1 / 0 / -1 (uncertain) / blank.
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
    normalise_sex,
    normalise_split,
    parse_numeric,
    parse_tristate,
    read_csv,
)

_logger = logging.getLogger(__name__)

_VIEWS = {"pa": "PA", "ap": "AP", "ap_supine": "AP_SUPINE", "ap_horizontal": "AP_SUPINE", "lateral": "LATERAL",
          "l": "LATERAL", "ll": "LATERAL", "rl": "LATERAL"}
_REQUIRED_ROLES = ("label_file", "image_id", "path", "labels")


def _columns(entry: dict[str, Any]) -> dict[str, Any]:
    cols = entry.get("columns")
    if not isinstance(cols, dict):
        raise DatasetFormatError("config key 'columns' (a mapping of roles to column names) is required for generic_csv")
    missing = [r for r in _REQUIRED_ROLES if r not in cols]
    if missing:
        raise DatasetFormatError(f"config key 'columns' lacks role(s) {missing} for adapter generic_csv")
    if not isinstance(cols["labels"], dict) or not cols["labels"]:
        raise DatasetFormatError("config key 'columns.labels' must map canonical findings to source columns")
    return cols


def label_files(root: Path, entry: dict[str, Any]) -> list[Path]:
    """The one CSV named by ``columns.label_file``."""
    return [root / _columns(entry)["label_file"]]


def read(root: Path, settings: dict[str, Any]) -> pd.DataFrame:
    """Index rows for every row of the configured CSV."""
    cols = _columns(settings["dataset"])
    path = root / cols["label_file"]
    sources = list(dict.fromkeys(cols["labels"].values()))
    optional_roles = [r for r in ("patient_id", "study_id", "split", "view", "sex", "age") if r in cols]
    df = read_csv(path, [cols["image_id"], cols["path"], *sources], optional=[cols[r] for r in optional_roles])
    missing_optional = [cols[r] for r in optional_roles if cols[r] not in df]
    if missing_optional:
        raise DatasetFormatError(f"{path}: missing configured column(s) {missing_optional}")
    check_unique(df[cols["image_id"]], path=path, column=cols["image_id"])
    check_present(df, [cols["image_id"], cols["path"]], path=path)
    ids = df[cols["image_id"]].to_numpy(dtype=object)
    base: dict[str, Any] = {
        "image_id": ids,
        "patient_id": df[cols["patient_id"]].fillna(df[cols["image_id"]]).to_numpy(dtype=object)
        if "patient_id" in cols else ids,
        "study_id": df[cols["study_id"]].to_numpy(dtype=object) if "study_id" in cols else None,
        "source_path": df[cols["path"]].str.lstrip("/").to_numpy(dtype=object),
        "split_official": normalise_split(df[cols["split"]], path=path, column=cols["split"]) if "split" in cols else None,
        "sex": normalise_sex(df[cols["sex"]]) if "sex" in cols else None,
        "age_years": parse_numeric(df[cols["age"]], path=path, column=cols["age"]) if "age" in cols else None,
    }
    if "view" in cols:
        base["view_raw"] = df[cols["view"]].to_numpy(dtype=object)
        base["view"] = map_values(df[cols["view"]].fillna(""), _VIEWS, path=path, column=cols["view"], lower=True,
                                  default="OTHER")
    else:
        base["view"] = np.full(len(df), "OTHER", dtype=object)
        _logger.warning("%s: no view column configured; every image has view OTHER (set `views` to keep them)", path)
    raw = {src: parse_tristate(df[src], path=path, column=src) for src in sources}
    return finish_index(base, raw, len(df))
