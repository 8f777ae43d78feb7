"""Every study adapter on the synthetic demo datasets (cxrbench.demo), images checked on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from cxrbench.datasets import build_index, label_files
from cxrbench.labels import harmonise, label_presets
from cxrbench.labels.harmonise import existing_files

demo = pytest.importorskip("cxrbench.demo")


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    demo.write_demo(root, seed=7, images_per_dataset=150)
    return root


def _native_image_count(adapter: str, files: list[Path]) -> int:
    """Distinct images listed in the native label files, counted with plain pandas."""
    if adapter == "vindr":
        return len(set().union(*(set(pd.read_csv(f)["image_id"]) for f in files)))
    if adapter == "chexpert":
        return sum(len(pd.read_csv(f)) for f in files)
    if adapter == "mimic":
        return len(pd.read_csv(files[0]))
    if adapter == "chestxray14":
        return len(pd.read_csv(files[0]))
    if adapter == "padchest":
        return len(pd.read_csv(files[0], dtype=str))
    return len(pd.read_csv(files[0]))


@pytest.mark.parametrize("adapter", ["vindr", "chestxray14", "chexpert", "mimic", "padchest", "uka"])
def test_adapter_on_demo(demo_root: Path, adapter: str) -> None:
    folder = demo.DATASETS[adapter][0]
    root = demo_root / folder
    entry = {"adapter": adapter, "root": str(root), "label_set": f"study_{adapter}", "reader_merge": "majority"}
    files = label_files(adapter, root, entry)
    assert all(f.is_file() for f in files), files
    s = {"name": adapter, "dataset": entry, "labels": {}, "splits": {}, "seed": 1}
    idx = build_index(s)
    assert len(idx) == _native_image_count(adapter, files)
    h = harmonise(idx, s, exists=lambda p: existing_files(root, p))
    assert "image_missing" not in h.exclusions  # every listed image is on disk at its source_path
    assert len(h.labels) + sum(h.exclusions.values()) == len(idx)
    assert h.label_set == label_presets()[f"study_{adapter}"]["labels"]
    assert h.labels.groupby("patient_id")["split"].nunique().max() == 1
    assert set(h.labels["split"]) == {"train", "val", "test"}
    manifest = json.loads((demo_root / demo.MANIFEST).read_text())
    assert manifest["datasets"][adapter]["root"] == folder
