"""Pedi-CXR (VinDr-PCXR): the VinDr-CXR file set and reader merge (see :mod:`cxrbench.datasets.vindr`).

Its label columns are not verified against the real release (datasets.md section 12), so any 0/1
column besides ``image_id`` / ``rad_id`` is accepted as a source label.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from cxrbench.datasets import vindr

label_files = vindr.label_files


def read(root: Path, settings: dict[str, Any]) -> pd.DataFrame:
    """Index rows for every image of the training and test label files, readers merged."""
    return vindr.read(root, settings, adapter="pedicxr")
