"""Synthetic demo datasets in the exact native layouts of the six study datasets.

:func:`write_demo` writes, under one root, VinDr-CXR, ChestX-ray14, CheXpert, MIMIC-CXR-JPG, PadChest
and UKA-CXR folders with their real label-file formats and image formats (DICOM, 8-bit PNG/JPG, 16-bit
PNG), whose images are chest phantoms with drawn findings (:mod:`cxrbench.demo.phantom`), plus
``demo-manifest.json``. See docs/demo-data.md.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from cxrbench.demo import chestxray14, chexpert, mimic, padchest, uka, vindr
from cxrbench.demo.common import Identifiers, check_encoders

__all__ = ["DATASETS", "GENERATOR_VERSION", "MANIFEST", "SCALE", "write_demo"]

_logger = logging.getLogger(__name__)

# Bump when the output for a given seed changes (the manifest records it).
GENERATOR_VERSION = "2.0.0"
MANIFEST = "demo-manifest.json"

# MIMIC-CXR, the pre-training dataset of the study's MIMIC-supervised chain, is also the largest real one:
# twice the images lets the chain's pre-training learn the shared drawings better than one target's data alone,
# which is the known answer's positive control (docs/demo-data.md).
SCALE: dict[str, int] = {"mimic": 2}

Writer = Callable[..., dict[str, int]]
# dataset key (the adapter name) -> (folder under the demo root, writer)
DATASETS: dict[str, tuple[str, Writer]] = {
    "vindr": ("vindr-cxr/1.0.0", vindr.write),
    "chestxray14": ("chestxray14", chestxray14.write),
    "chexpert": ("CheXpert-v1.0-small", chexpert.write),
    "mimic": ("mimic-cxr-jpg/2.1.0", mimic.write),
    "padchest": ("padchest", padchest.write),
    "uka": ("uka-cxr", uka.write),
}


def _write_one(root: Path, name: str, seed: int, images_per_dataset: int) -> tuple[dict[str, int], set[str], float]:
    """Write one dataset; returns its counts, the identifiers written into its DICOMs and the seconds taken."""
    folder, writer = DATASETS[name]
    identifiers = Identifiers()
    t0 = time.perf_counter()
    counts = writer(root / folder, seed=seed, n_images=images_per_dataset * SCALE.get(name, 1),
                    identifiers=identifiers)
    return counts, identifiers.values, time.perf_counter() - t0


def write_demo(
    root: Path, *, seed: int, images_per_dataset: int, datasets: list[str] | None = None, workers: int = 1
) -> dict[str, object]:
    """Write the demo datasets under ``root`` and ``root/demo-manifest.json``; returns the manifest.

    ``datasets`` selects dataset keys (default: all six). The same ``seed`` gives byte-identical
    label files and images, whatever ``workers`` (processes writing datasets side by side): every dataset draws
    from its own generators (:func:`cxrbench.demo.common.dataset_rng`).
    """
    names = list(DATASETS) if datasets is None else list(datasets)
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        raise ValueError(f"unknown demo dataset(s) {unknown}; known: {', '.join(DATASETS)}")
    if not 150 <= images_per_dataset <= 400:
        raise ValueError(f"images_per_dataset must be within 150-400, got {images_per_dataset}")
    if {"vindr", "uka"} & set(names):
        check_encoders()
    root = Path(root)
    identifiers = Identifiers()
    results: dict[str, tuple[dict[str, int], set[str], float]] = {}
    if workers > 1 and len(names) > 1:
        # The largest datasets first, so the last one to start is a small one.
        order = sorted(names, key=lambda n: -SCALE.get(n, 1))
        with ProcessPoolExecutor(max_workers=min(workers, len(names))) as pool:
            futures = {n: pool.submit(_write_one, root, n, seed, images_per_dataset) for n in order}
            results = {n: futures[n].result() for n in order}
    else:
        results = {n: _write_one(root, n, seed, images_per_dataset) for n in names}
    written: dict[str, dict[str, object]] = {}
    for name in names:
        counts, values, seconds = results[name]
        identifiers.add(*values)
        _logger.info("demo %s: %s in %.1f s -> %s", name, counts, seconds, root / DATASETS[name][0])
        written[name] = {"root": DATASETS[name][0], **counts}
    manifest: dict[str, object] = {
        "generator": "cxrbench.demo",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "images_per_dataset": images_per_dataset,
        "datasets": written,
        "identifiers": identifiers.sorted(),
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest
