"""NIH ChestX-ray14 in its native layout (datasets.md §1).

``Data_Entry_2017_v2020.csv`` (11 columns: the bracketed header fields split at their commas),
``train_val_list.txt`` / ``test_list.txt`` (patient-wise) and ``images/<PatientID:08d>_<NNN:03d>.png``
(8-bit grey, a few stored RGBA as in the real release).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.demo.common import (
    Identifiers,
    LabelSpec,
    allocate_images,
    dataset_rng,
    findings_from_labels,
    render_image,
    sample_positive_labels,
    save_png8,
    write_csv,
)
from cxrbench.demo.phantom import Anatomy

__all__ = ["COLUMNS", "LABELS", "write"]

_logger = logging.getLogger(__name__)
NAME = "chestxray14"

COLUMNS = [
    "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
    "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]",
]
LABELS: tuple[LabelSpec, ...] = (
    LabelSpec("Atelectasis", "atelectasis", 0.2),
    LabelSpec("Cardiomegaly", "cardiomegaly", 0.35),
    LabelSpec("Consolidation", "consolidation", 0.2),
    LabelSpec("Edema", "edema", 0.15),
    LabelSpec("Effusion", "pleural_effusion", 0.35),
    LabelSpec("Emphysema", "emphysema", 0.15),
    LabelSpec("Fibrosis", "fibrosis", 0.06),
    LabelSpec("Hernia", "hernia", 0.04),
    LabelSpec("Infiltration", "opacity", 0.3),
    LabelSpec("Mass", "mass", 0.1),
    LabelSpec("Nodule", "nodule", 0.12),
    LabelSpec("Pleural_Thickening", "pleural_thickening", 0.08),
    LabelSpec("Pneumonia", "opacity", 0.15),
    LabelSpec("Pneumothorax", "pneumothorax", 0.1),
)
# Original detector sizes and pixel spacings, written as the real file writes them.
_ORIGINAL = ((2500, 2048, "0.168"), (2992, 2991, "0.143"), (3056, 2544, "0.139"), (2048, 2500, "0.171"))
SIZE = (256, 256)


def write(root: Path, *, seed: int, n_images: int, identifiers: Identifiers) -> dict[str, int]:
    """Write the dataset under ``root``; returns counts."""
    del identifiers  # PNGs carry no identifying header
    rng = dataset_rng(seed, NAME)
    counts = allocate_images(rng, n_images, max_per_patient=6)
    patient_ids = np.sort(rng.choice(np.arange(1, 30806), size=len(counts), replace=False))
    test_patients = set(patient_ids[rng.random(len(counts)) < 0.23].tolist())
    rows = []
    index = 0
    for pid, k in zip(patient_ids.tolist(), counts, strict=True):
        anatomy = Anatomy.sample(rng)
        age0 = int(rng.integers(18, 90))
        sex = "M" if rng.random() < 0.56 else "F"
        for j in range(k):
            labels = sample_positive_labels(rng, LABELS, p_normal=0.45)
            order = rng.permutation(len(labels))  # token order in the real file is not alphabetical
            tokens = "|".join(labels[i] for i in order) if labels else "No Finding"
            follow_up = j if rng.random() < 0.8 else int(rng.integers(0, j + 1))  # v2020: may differ from NNN
            w, h, spacing = _ORIGINAL[int(rng.integers(len(_ORIGINAL)))]
            name = f"{pid:08d}_{j:03d}.png"
            rows.append([name, tokens, follow_up, pid, min(age0 + j // 2, 95), sex,
                         "PA" if rng.random() < 0.6 else "AP", w, h, spacing, spacing])
            findings = findings_from_labels(rng, labels, LABELS)
            rgba = bool(rng.random() < 0.03)
            img, _ = render_image(seed, NAME, index, findings, anatomy, SIZE)
            save_png8(root / "images" / name, img, rgba=rgba)
            index += 1
    df = pd.DataFrame(rows, columns=COLUMNS)
    write_csv(df, root / "Data_Entry_2017_v2020.csv")
    is_test = df["Patient ID"].isin(test_patients)
    (root / "test_list.txt").write_text("".join(f"{n}\n" for n in df.loc[is_test, "Image Index"]))
    (root / "train_val_list.txt").write_text("".join(f"{n}\n" for n in df.loc[~is_test, "Image Index"]))
    return {"images": len(df), "patients": len(counts), "test_images": int(is_test.sum())}
