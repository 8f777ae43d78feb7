"""Dataset adapters: each reads one dataset's native label/metadata files exactly as distributed and
returns the index table of ``docs/contracts.md`` section 1 (one row per listed image, before any policy).

An adapter module defines ``label_files(root, entry) -> list[Path]`` and ``read(root, settings) ->
DataFrame``. Source labels come out as ``raw_<source label>`` float32 columns holding 1 / 0 / -1
(uncertain) / NaN (not mentioned or not available) in the dataset's own vocabulary, except for the
token-list datasets (ChestX-ray14, PadChest), whose reported tokens are one compact ``source_tokens``
column; :func:`source_values` reads either form. Native encodings (token lists, reader rows, severity
grades) are decoded here, the canonical map is applied later by :mod:`cxrbench.labels`.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from cxrbench.datasets._io import INDEX_BASE_COLUMNS, VIEWS, DatasetFormatError, native_vocabulary
from cxrbench.datasets.schema import read_index, source_values, validate_index, write_index

_logger = logging.getLogger(__name__)

__all__ = [
    "ADAPTERS",
    "INDEX_BASE_COLUMNS",
    "VIEWS",
    "DatasetFormatError",
    "build_index",
    "label_files",
    "native_vocabulary",
    "read_index",
    "source_values",
    "validate_index",
    "write_index",
]

ADAPTERS: dict[str, str] = {
    "vindr": "cxrbench.datasets.vindr",
    "chestxray14": "cxrbench.datasets.chestxray14",
    "chexpert": "cxrbench.datasets.chexpert",
    "mimic": "cxrbench.datasets.mimic",
    "padchest": "cxrbench.datasets.padchest",
    "uka": "cxrbench.datasets.uka",
    "pedicxr": "cxrbench.datasets.pedicxr",
    "generic_csv": "cxrbench.datasets.generic_csv",
}


def _module(adapter: str) -> Any:
    if adapter not in ADAPTERS:
        raise ValueError(f"unknown dataset adapter {adapter!r} (known: {', '.join(ADAPTERS)})")
    return importlib.import_module(ADAPTERS[adapter])


def label_files(adapter: str, root: Path, entry: dict) -> list[Path]:
    """The native label/metadata files ``adapter`` reads under ``root`` (the index rule's inputs)."""
    return list(_module(adapter).label_files(Path(root), entry))


def build_index(settings: dict[str, Any]) -> pd.DataFrame:
    """Read one dataset's native files into an index table (schema-checked when written and read).

    ``settings`` is the stage settings object: ``{"name", "dataset": <config entry>, "labels", ...}``.
    """
    entry = settings["dataset"]
    root = Path(entry["root"])
    df = _module(entry["adapter"]).read(root, settings)
    _logger.info("%s: %d index rows from %s (adapter %s)", settings.get("name"), len(df), root, entry["adapter"])
    return df  # validated against the declared schema by write_index / read_index
