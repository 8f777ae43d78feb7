"""VinDr-CXR 1.0.0 (PhysioNet) in its native layout (datasets.md §4).

``train/<image_id>.dicom`` and ``test/<image_id>.dicom`` (32-hex ids, the ``.dicom`` extension),
``annotations/image_labels_train.csv`` (one row per image and reader, 3 of R1..R17, ``Other diseases``),
``annotations/image_labels_test.csv`` (one consensus row per image, ``Other disease``; no ``rad_id``:
the real test header is an open item) and ``annotations/annotations_{train,test}.csv`` (one row per box,
``No finding`` rows with empty coordinates). No patient id exists in VinDr-CXR.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.demo.common import (
    FIXED_IDENTIFIERS,
    DicomImage,
    Identifiers,
    LabelSpec,
    dataset_rng,
    findings_from_labels,
    pick_transfer_syntax,
    render_image,
    sample_positive_labels,
    write_csv,
    write_dicom,
)
from cxrbench.demo.phantom import Anatomy

__all__ = ["BOX_COLUMNS", "GLOBAL_LABELS", "LABELS", "LOCAL_LABELS", "write"]

_logger = logging.getLogger(__name__)
NAME = "vindr"

# The 22 local labels (they get boxes), then the global ones; documented order.
LABELS: tuple[LabelSpec, ...] = (
    LabelSpec("Aortic enlargement", "aortic_enlargement", 0.2),
    LabelSpec("Atelectasis", "atelectasis", 0.12),
    LabelSpec("Calcification", "calcification", 0.08),
    LabelSpec("Cardiomegaly", "cardiomegaly", 0.35),
    LabelSpec("Clavicle fracture", None, 0.01),
    LabelSpec("Consolidation", "consolidation", 0.15),
    LabelSpec("Edema", "edema", 0.02),
    LabelSpec("Emphysema", "emphysema", 0.03),
    LabelSpec("Enlarged PA", None, 0.03),
    LabelSpec("ILD", "fibrosis", 0.06),
    LabelSpec("Infiltration", "opacity", 0.06),
    LabelSpec("Lung Opacity", "opacity", 0.25),
    LabelSpec("Lung cavity", None, 0.02),
    LabelSpec("Lung cyst", None, 0.01),
    LabelSpec("Mediastinal shift", None, 0.02),
    LabelSpec("Nodule/Mass", "nodule", 0.12),
    LabelSpec("Pleural effusion", "pleural_effusion", 0.3),
    LabelSpec("Pleural thickening", "pleural_thickening", 0.15),
    LabelSpec("Pneumothorax", "pneumothorax", 0.05),
    LabelSpec("Pulmonary fibrosis", "fibrosis", 0.12),
    LabelSpec("Rib fracture", None, 0.02),
    LabelSpec("Other lesion", None, 0.08),
    LabelSpec("COPD", "emphysema", 0.02),
    LabelSpec("Lung tumor", "mass", 0.05),
    LabelSpec("Pneumonia", "opacity", 0.15),
    LabelSpec("Tuberculosis", None, 0.06),
    LabelSpec("Other diseases", None, 0.1),
)
LOCAL_LABELS = [s.label for s in LABELS[:22]]
GLOBAL_LABELS = [s.label for s in LABELS[22:]] + ["No finding"]
TRAIN_COLUMNS = ["image_id", "rad_id", *LOCAL_LABELS, *GLOBAL_LABELS]
TEST_COLUMNS = ["image_id", *LOCAL_LABELS, *(g.replace("Other diseases", "Other disease") for g in GLOBAL_LABELS)]
BOX_COLUMNS = ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
READERS = [f"R{i}" for i in range(1, 18)]


def _reader_labels(rng: np.random.Generator, truth: list[str]) -> list[str]:
    """One reader's positives: misses a true finding with p=0.2, adds a false one with p=0.005 each."""
    out = [lab for lab in truth if rng.random() >= 0.2]
    out += [s.label for s in LABELS if s.label not in truth and rng.random() < 0.005]
    return [s.label for s in LABELS if s.label in out]


def _boxes(
    rng: np.random.Generator, image_id: str, rad_id: str, positives: list[str],
    drawn: dict[str, tuple[float, float, float, float]], shape: tuple[int, int],
) -> list[list[object]]:
    """Box rows of one reading: each local positive gets its drawn box (jittered by the reader)."""
    spec = {s.label: s.finding for s in LABELS}
    rows: list[list[object]] = []
    for label in positives:
        if label not in LOCAL_LABELS:
            continue
        box = drawn.get(spec[label] or "")
        if box is None:  # not drawn: a reader still marks a region in the lungs
            cx, cy = rng.uniform(0.25, 0.75) * shape[1], rng.uniform(0.25, 0.6) * shape[0]
            box = (cx - 12, cy - 12, cx + 12, cy + 12)
        j = rng.uniform(-3, 3, size=4)
        x0, y0, x1, y1 = (float(np.clip(round(v + d), 0, lim - 1))
                          for v, d, lim in zip(box, j, (shape[1], shape[0]) * 2, strict=True))
        rows.append([image_id, rad_id, label, x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)])
    if not positives:
        rows.append([image_id, rad_id, "No finding", None, None, None, None])
    return rows


def write(root: Path, *, seed: int, n_images: int, identifiers: Identifiers) -> dict[str, int]:
    """Write the dataset under ``root`` (= ``vindr-cxr/1.0.0``); returns counts."""
    rng = dataset_rng(seed, NAME)
    n_test = max(10, n_images // 4)  # more than the real 1/6, so each finding has test positives
    train_rows, test_rows, train_boxes, test_boxes = [], [], [], []
    for index in range(n_images):
        part = "train" if index < n_images - n_test else "test"
        image_id = "".join(f"{int(v):08x}" for v in rng.integers(0, 2**32, size=4, dtype=np.uint64))
        truth = sample_positive_labels(rng, LABELS, p_normal=0.4)
        findings = findings_from_labels(rng, truth, LABELS)
        shape = (int(rng.integers(288, 353)), int(rng.integers(256, 337)))
        img, drawn = render_image(seed, NAME, index, findings, Anatomy.sample(rng), shape)
        if part == "train":
            for rad_id in sorted(rng.choice(READERS, size=3, replace=False), key=lambda r: int(r[1:])):
                read = _reader_labels(rng, truth)
                train_rows.append([image_id, rad_id, *(int(lab in read) for lab in LOCAL_LABELS),
                                   *(int(lab in read) for lab in GLOBAL_LABELS[:-1]), int(not read)])
                train_boxes += _boxes(rng, image_id, rad_id, read, drawn, shape)
        else:
            test_rows.append([image_id, *(int(lab in truth) for lab in LOCAL_LABELS),
                              *(int(lab in truth) for lab in GLOBAL_LABELS[:-1]), int(not truth)])
            test_boxes += _boxes(rng, image_id, str(rng.choice(READERS)), truth, drawn, shape)
        birth = pd.Timestamp("1930-01-01") + pd.Timedelta(days=int(rng.integers(0, 365 * 60)))
        meta = DicomImage(
            key=f"{NAME}/{seed}/{image_id}",
            modality="DX" if rng.random() < 0.5 else "CR",
            view="PA",
            photometric="MONOCHROME1" if rng.random() < 0.3 else "MONOCHROME2",
            bits_stored=int(rng.integers(12, 16)),
            transfer_syntax=pick_transfer_syntax(rng),
            patient_name=f"FAKE^VINDR{index:05d}",
            patient_id=f"FAKE-VINDR-{index:05d}",
            birth_date=birth.strftime("%Y%m%d"),
            sex=str(rng.choice(["M", "F"])),
            accession=f"FAKEACC{image_id[:8].upper()}",
            study_date="20190101",
            study_key=f"{NAME}/{seed}/{image_id}",
            rescale_intercept=-1024.0 if rng.random() < 0.15 else 0.0,
        )
        identifiers.add(meta.patient_name, meta.patient_id, meta.birth_date, meta.accession)
        write_dicom(root / part / f"{image_id}.dicom", img, meta)
    ann = root / "annotations"
    write_csv(pd.DataFrame(train_rows, columns=TRAIN_COLUMNS), ann / "image_labels_train.csv")
    write_csv(pd.DataFrame(test_rows, columns=TEST_COLUMNS), ann / "image_labels_test.csv")
    write_csv(pd.DataFrame(train_boxes, columns=BOX_COLUMNS), ann / "annotations_train.csv")
    write_csv(pd.DataFrame(test_boxes, columns=BOX_COLUMNS), ann / "annotations_test.csv")
    identifiers.add(*FIXED_IDENTIFIERS)
    return {"images": n_images, "train_images": n_images - n_test, "test_images": n_test,
            "train_label_rows": len(train_rows)}
