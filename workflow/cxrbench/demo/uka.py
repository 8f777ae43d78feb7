"""UKA-CXR (private; native form defined from the group's code, datasets.md §6).

``master_list.csv`` (one row per image: ids, patient-wise ``split`` train/valid/test, ``subset``
folder, age, sex, integer severity grades, ``healthy`` 0/1) and ``images/<subset>/<image_id>.dcm``:
bedside AP DICOMs. Grades (this demo's code table; confirm the real one with the data owners):
cardiomegaly 1 normal, 2 borderline, 3 enlarged, 4 massively enlarged; the other findings 1 none,
2 questionable, 3 mild-moderate, 4 severe, 5 not assessable. The published loader counts 3 and 4 as
positive; grade 2 is drawn faintly, 3 and 4 clearly, 1 and 5 not at all.
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
    allocate_images,
    dataset_rng,
    pick_transfer_syntax,
    render_image,
    write_csv,
    write_dicom,
)
from cxrbench.demo.phantom import Anatomy, Finding

__all__ = ["COLUMNS", "GRADED", "write"]

_logger = logging.getLogger(__name__)
NAME = "uka"

# graded column -> (phantom drawing, patient side or None, grade probabilities for grades 1..5)
_OTHER = (0.6, 0.14, 0.16, 0.08, 0.02)
GRADED: dict[str, tuple[str, str | None, tuple[float, ...]]] = {
    "cardiomegaly": ("cardiomegaly", None, (0.5, 0.18, 0.24, 0.08, 0.0)),
    "congestion": ("edema", None, _OTHER),
    "pleural_effusion_right": ("pleural_effusion", "R", _OTHER),
    "pleural_effusion_left": ("pleural_effusion", "L", _OTHER),
    "pneumonic_infiltrates_right": ("opacity", "R", _OTHER),
    "pneumonic_infiltrates_left": ("opacity", "L", _OTHER),
    "atelectasis_right": ("atelectasis", "R", _OTHER),
    "atelectasis_left": ("atelectasis", "L", _OTHER),
    "pneumothorax_right": ("pneumothorax", "R", (0.95, 0.02, 0.02, 0.01, 0.0)),
    "pneumothorax_left": ("pneumothorax", "L", (0.95, 0.02, 0.02, 0.01, 0.0)),
}
COLUMNS = ["image_id", "split", "subset", "age", "patient_sex", "subject_id", *GRADED, "healthy"]
_SEVERITY = {1: 0.0, 2: 0.3, 3: 0.7, 4: 1.0, 5: 0.0}
IMAGES_PER_SUBSET = 100


def _grades(rng: np.random.Generator) -> dict[str, int]:
    """Grades of one image: about a third of images are entirely normal."""
    if rng.random() < 0.3:
        return {col: 1 for col in GRADED}
    return {col: int(rng.choice(5, p=np.array(p) / sum(p))) + 1 for col, (_, _, p) in GRADED.items()}


def _findings(grades: dict[str, int]) -> list[Finding]:
    """Drawn findings: right and left columns of one finding merge into one drawing (side B if both)."""
    merged: dict[str, tuple[set[str], float]] = {}
    for col, (name, side, _) in GRADED.items():
        sev = _SEVERITY[grades[col]]
        if sev == 0:
            continue
        sides, best = merged.get(name, (set(), 0.0))
        merged[name] = (sides | {side or "B"}, max(best, sev))
    return [Finding(name, "B" if len(sides) > 1 or "B" in sides else next(iter(sides)), sev)
            for name, (sides, sev) in merged.items()]


def write(root: Path, *, seed: int, n_images: int, identifiers: Identifiers) -> dict[str, int]:
    """Write the dataset under ``root`` (= ``uka-cxr``); returns counts."""
    rng = dataset_rng(seed, NAME)
    per_subject = allocate_images(rng, n_images, max_per_patient=6)
    subjects = np.sort(rng.choice(np.arange(1000, 100000), size=len(per_subject), replace=False))
    image_ids = np.sort(rng.choice(np.arange(100000, 1000000), size=n_images, replace=False))
    order = rng.permutation(n_images)  # image ids are not grouped by patient
    rows = []
    index = 0
    for subject, k in zip(subjects.tolist(), per_subject, strict=True):
        u = rng.random()
        split = "test" if u < 0.2 else "valid" if u < 0.3 else "train"
        anatomy = Anatomy.sample(rng)
        sex = "M" if rng.random() < 0.6 else "F"
        age = int(rng.integers(25, 92))
        birth = pd.Timestamp(f"{2015 - age}-01-01") + pd.Timedelta(days=int(rng.integers(0, 365)))
        name, pid = f"FAKE^UKA{subject:05d}", f"FAKE-UKA-{subject:05d}"
        identifiers.add(name, pid, birth.strftime("%Y%m%d"))
        for j in range(k):
            image_id = int(image_ids[order[index]])
            subset = 1 + int(order[index]) // IMAGES_PER_SUBSET
            grades = _grades(rng)
            healthy = int(not any(g in (3, 4) for g in grades.values()))
            rows.append([image_id, split, subset, age, sex, subject, *grades.values(), healthy])
            img, _ = render_image(seed, NAME, index, _findings(grades), anatomy,
                                  (int(rng.integers(288, 353)), int(rng.integers(256, 337))))
            meta = DicomImage(
                key=f"{NAME}/{seed}/{image_id}",
                modality="CR" if rng.random() < 0.8 else "DX",
                view="AP",
                photometric="MONOCHROME1" if rng.random() < 0.4 else "MONOCHROME2",
                bits_stored=int(rng.integers(12, 16)),
                transfer_syntax=pick_transfer_syntax(rng),
                patient_name=name,
                patient_id=pid,
                birth_date=birth.strftime("%Y%m%d"),
                sex=sex,
                accession=f"FAKEACC{image_id:08d}",
                study_date=(pd.Timestamp("2015-01-01") + pd.Timedelta(days=30 * j)).strftime("%Y%m%d"),
                study_key=f"{NAME}/{seed}/{image_id}",
            )
            identifiers.add(meta.accession)
            write_dicom(root / "images" / str(subset) / f"{image_id}.dcm", img, meta)
            index += 1
    df = pd.DataFrame(rows, columns=COLUMNS).sort_values("image_id", kind="stable")
    write_csv(df, root / "master_list.csv")
    identifiers.add(*FIXED_IDENTIFIERS)
    return {"images": len(df), "patients": len(subjects), "test_images": int((df["split"] == "test").sum())}
