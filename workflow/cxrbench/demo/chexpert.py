"""CheXpert-v1.0-small in its native layout (datasets.md §2).

``train.csv`` / ``valid.csv`` (19 columns; train values ``1.0`` / ``0.0`` / ``-1.0`` / blank with
``No Finding`` only ``1.0`` or blank; valid only ``0.0`` / ``1.0``), ``Path`` values starting with
``CheXpert-v1.0-small/``, images ``{train,valid}/patientNNNNN/studyM/viewK_{frontal,lateral}.jpg``.
Labels are per study: every view of a study shares its row values and its drawn findings.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.demo.common import (
    Identifiers,
    LabelSpec,
    dataset_rng,
    findings_from_labels,
    render_image,
    sample_positive_labels,
    save_jpeg,
    write_csv,
)
from cxrbench.demo.phantom import Anatomy

__all__ = ["COLUMNS", "LABELS", "encode_study", "write"]

_logger = logging.getLogger(__name__)
NAME = "chexpert"
RELEASE = "CheXpert-v1.0-small"

# The 13 observations besides No Finding, in the CheXpert column order (MIMIC shares them).
LABELS: tuple[LabelSpec, ...] = (
    LabelSpec("Enlarged Cardiomediastinum", "enlarged_cardiomediastinum", 0.1),
    LabelSpec("Cardiomegaly", "cardiomegaly", 0.35),
    LabelSpec("Lung Opacity", "opacity", 0.35),
    LabelSpec("Lung Lesion", "nodule", 0.08),
    LabelSpec("Edema", "edema", 0.2),
    LabelSpec("Consolidation", "consolidation", 0.2),
    LabelSpec("Pneumonia", "opacity", 0.15),
    LabelSpec("Atelectasis", "atelectasis", 0.2),
    LabelSpec("Pneumothorax", "pneumothorax", 0.1),
    LabelSpec("Pleural Effusion", "pleural_effusion", 0.35),
    LabelSpec("Pleural Other", "pleural_thickening", 0.04),
    LabelSpec("Fracture", None, 0.3, control=True),  # the negative control: never drawn
    LabelSpec("Support Devices", "support_devices", 0.4),
)
COLUMNS = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", *(s.label for s in LABELS)]
SIZE = (288, 256)


def encode_study(rng: np.random.Generator, positives: list[str], *, certain: bool) -> dict[str, str]:
    """CheXpert-labeller values of one study for ``No Finding`` and the 13 observations.

    ``certain`` (radiologist labels, valid.csv) gives only ``1.0``/``0.0``. Otherwise a positive is
    ``1.0`` or sometimes ``-1.0`` (uncertain); a negative is mostly blank (not mentioned), else
    ``0.0`` or rarely ``-1.0``. ``No Finding`` is ``1.0`` exactly when nothing but Support Devices is
    positive or uncertain, else blank (``0.0`` in valid).
    """
    out: dict[str, str] = {}
    for spec in LABELS:
        pos = spec.label in positives
        if certain:
            out[spec.label] = "1.0" if pos else "0.0"
        elif pos:
            out[spec.label] = "-1.0" if rng.random() < 0.15 else "1.0"
        else:
            out[spec.label] = str(rng.choice(["", "0.0", "-1.0"], p=[0.6, 0.33, 0.07]))
    findings = [k for k, v in out.items() if k != "Support Devices" and v in ("1.0", "-1.0")]
    if findings:
        nf = "0.0" if certain else ""
    else:
        nf = "1.0"
    return {"No Finding": nf, **out}


def _sample_study(rng: np.random.Generator) -> list[str]:
    """Positive observations of one study (Support Devices also occurs on otherwise normal studies)."""
    positives = sample_positive_labels(rng, LABELS, p_normal=0.3)
    if not positives and rng.random() < 0.3:
        positives = ["Support Devices"]
    return positives


def write(root: Path, *, seed: int, n_images: int, identifiers: Identifiers) -> dict[str, int]:
    """Write the dataset under ``root`` (= the ``CheXpert-v1.0-small`` folder); returns counts."""
    del identifiers  # JPGs carry no identifying header
    rng = dataset_rng(seed, NAME)
    n_valid = max(12, n_images // 8)
    tables: dict[str, list[list[str]]] = {"train": [], "valid": []}
    index, patient = 0, 0
    while index < n_images:
        part = "train" if index < n_images - n_valid else "valid"
        patient += 1
        anatomy = Anatomy.sample(rng)
        age0 = int(rng.integers(18, 90))
        sex = str(rng.choice(["Male", "Female", "Unknown"], p=[0.55, 0.44, 0.01]))
        n_studies = 1 if part == "valid" else int(rng.choice([1, 2, 3], p=[0.55, 0.3, 0.15]))
        for study in range(1, n_studies + 1):
            positives = _sample_study(rng)
            values = encode_study(rng, positives, certain=part == "valid")
            findings = findings_from_labels(rng, positives, LABELS)
            views = ["frontal"]
            if rng.random() < 0.35:
                views.append("lateral")
            elif rng.random() < 0.05:
                views.append("frontal")
            ap_pa = "AP" if rng.random() < 0.75 else "PA"
            for k, view in enumerate(views, start=1):
                if index >= n_images:
                    break
                rel = f"{part}/patient{patient:05d}/study{study}/view{k}_{view}.jpg"
                lateral = view == "lateral"
                tables[part].append([
                    f"{RELEASE}/{rel}", sex, str(age0 + study - 1), "Lateral" if lateral else "Frontal",
                    "" if lateral else ap_pa, *values.values(),
                ])
                img, _ = render_image(seed, NAME, index, findings, anatomy, SIZE, lateral=lateral)
                save_jpeg(root / rel, img, quality=90)
                index += 1
    for part, rows in tables.items():
        write_csv(pd.DataFrame(rows, columns=COLUMNS), root / f"{part}.csv")
    return {"images": index, "patients": patient, "valid_images": len(tables["valid"])}
