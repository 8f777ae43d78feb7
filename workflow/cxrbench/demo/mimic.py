"""MIMIC-CXR-JPG 2.1.0 in its native layout (datasets.md §3).

``mimic-cxr-2.0.0-metadata.csv.gz`` (one row per image), ``mimic-cxr-2.0.0-chexpert.csv.gz`` (one row
per study, label columns in alphabetical order, a few studies without a row),
``mimic-cxr-2.0.0-split.csv.gz`` (``train`` / ``validate`` / ``test``, patient-disjoint) and
``files/pXX/pSSSSSSSS/sTTTTTTTT/<dicom_id>.jpg`` (8-bit, histogram-equalised like the release).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.demo.chexpert import LABELS, encode_study
from cxrbench.demo.common import (
    Identifiers,
    allocate_images,
    dataset_rng,
    findings_from_labels,
    render_image,
    sample_positive_labels,
    save_jpeg,
    write_csv,
)
from cxrbench.demo.phantom import Anatomy

__all__ = ["CHEXPERT_COLUMNS", "METADATA_COLUMNS", "SPLIT_COLUMNS", "write"]

_logger = logging.getLogger(__name__)
NAME = "mimic"

METADATA_COLUMNS = [
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
    "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
]
CHEXPERT_COLUMNS = ["subject_id", "study_id", *sorted(["No Finding", *(s.label for s in LABELS)])]
SPLIT_COLUMNS = ["dicom_id", "study_id", "subject_id", "split"]
SIZE = (288, 256)
_VIEW_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral"}


def _dicom_id(rng: np.random.Generator) -> str:
    """Five dash-separated groups of 8 hex digits."""
    return "-".join(f"{int(v):08x}" for v in rng.integers(0, 2**32, size=5, dtype=np.uint64))


def write(root: Path, *, seed: int, n_images: int, identifiers: Identifiers) -> dict[str, int]:
    """Write the dataset under ``root`` (= ``mimic-cxr-jpg/2.1.0``); returns counts."""
    del identifiers  # JPGs carry no identifying header
    rng = dataset_rng(seed, NAME)
    per_subject = allocate_images(rng, n_images, max_per_patient=6)
    subjects = np.sort(rng.choice(np.arange(10_000_000, 20_000_000), size=len(per_subject), replace=False))
    study_ids = rng.choice(np.arange(50_000_000, 60_000_000), size=n_images, replace=False)
    # Patient-wise official split; the first subjects of the shuffled order guarantee every value occurs.
    order = rng.permutation(len(subjects))
    split_of = {}
    for rank, i in enumerate(order):
        u = rng.random()
        split_of[int(subjects[i])] = ("test" if rank == 0 or (rank > 1 and u < 0.15)
                                      else "validate" if rank == 1 or u < 0.23 else "train")
    meta, labels, splits = [], [], []
    index, n_studies = 0, 0
    for subject, k in zip(subjects.tolist(), per_subject, strict=True):
        anatomy = Anatomy.sample(rng)
        day = int(rng.integers(0, 365 * 80))  # shifted dates: years 2110-2190
        remaining = k
        while remaining > 0:
            study = int(study_ids[n_studies])
            n_studies += 1
            positives = sample_positive_labels(rng, LABELS, p_normal=0.3)
            if rng.random() > 0.04:  # a few studies have no CheXpert label row, as in the release
                values = encode_study(rng, positives, certain=False)
                labels.append([subject, study, *(values[c] for c in CHEXPERT_COLUMNS[2:])])
            findings = findings_from_labels(rng, positives, LABELS)
            portable = rng.random() < 0.45
            views = ["AP" if portable else "PA"]
            if not portable and remaining > 1:
                views.append("LATERAL" if rng.random() < 0.8 else "LL")
            views = views[:remaining]
            remaining -= len(views)
            day += int(rng.integers(1, 400))
            date = (pd.Timestamp("2110-01-01") + pd.Timedelta(days=day)).strftime("%Y%m%d")
            time = f"{int(rng.integers(0, 24)):02d}{int(rng.integers(0, 60)):02d}{int(rng.integers(0, 60)):02d}"
            time += f".{int(rng.integers(0, 1000)):03d}"
            procedure = "CHEST (PORTABLE AP)" if portable else "CHEST (PA AND LAT)"
            for view in views:
                dicom_id = _dicom_id(rng)
                lateral = view in ("LATERAL", "LL")
                orientation = "Recumbent" if portable and rng.random() < 0.5 else "Erect"
                if rng.random() < 0.05:
                    orientation = ""
                meta.append([dicom_id, subject, study, procedure, view, SIZE[0], SIZE[1], date, time, procedure,
                             _VIEW_MEANING[view], orientation])
                splits.append([dicom_id, study, subject, split_of[subject]])
                rel = Path("files") / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom_id}.jpg"
                img, _ = render_image(seed, NAME, index, findings, anatomy, SIZE, lateral=lateral)
                save_jpeg(root / rel, img, quality=95, equalise=True)
                index += 1
    write_csv(pd.DataFrame(meta, columns=METADATA_COLUMNS), root / "mimic-cxr-2.0.0-metadata.csv.gz")
    write_csv(pd.DataFrame(labels, columns=CHEXPERT_COLUMNS), root / "mimic-cxr-2.0.0-chexpert.csv.gz")
    write_csv(pd.DataFrame(splits, columns=SPLIT_COLUMNS), root / "mimic-cxr-2.0.0-split.csv.gz")
    return {"images": index, "patients": len(subjects), "studies": n_studies, "labelled_studies": len(labels)}
