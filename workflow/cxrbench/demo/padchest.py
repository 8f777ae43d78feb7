"""PadChest in its native layout (datasets.md §5).

``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz`` (36 columns, the first an unnamed index;
``Labels`` as Python-list strings with some leading spaces and some ``''`` items; numeric DICOM
columns ``None`` when missing; ``ViewPosition_DICOM`` ``nan`` when missing, as in the real file) and
images ``<ImageDir>/<ImageID>``: 16-bit grey PNGs with 12 significant bits (a few 10).
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
    save_png16,
    write_csv,
)
from cxrbench.demo.phantom import Anatomy

__all__ = ["COLUMNS", "LABELS", "write"]

_logger = logging.getLogger(__name__)
NAME = "padchest"
LABEL_FILE = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"

COLUMNS = [
    "", "ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM",
    "ViewPosition_DICOM", "Projection", "MethodProjection", "Pediatric", "Modality_DICOM", "Manufacturer_DICOM",
    "PhotometricInterpretation_DICOM", "PixelRepresentation_DICOM", "PixelAspectRatio_DICOM",
    "SpatialResolution_DICOM", "BitsStored_DICOM", "WindowCenter_DICOM", "WindowWidth_DICOM", "Rows_DICOM",
    "Columns_DICOM", "XRayTubeCurrent_DICOM", "Exposure_DICOM", "ExposureInuAs_DICOM", "ExposureTime",
    "RelativeXRayExposure_DICOM", "ReportID", "Report", "MethodLabel", "Labels", "Localizations",
    "LabelsLocalizationsBySentence", "labelCUIS", "LocalizationsCUIS",
]
# (label item, phantom drawing, prevalence among abnormal studies). Undrawn items include the
# substring traps (subcutaneous emphysema, pseudonodule) that exact matching must not count.
LABELS: tuple[LabelSpec, ...] = (
    LabelSpec("cardiomegaly", "cardiomegaly", 0.35),
    LabelSpec("pleural effusion", "pleural_effusion", 0.3),
    LabelSpec("loculated pleural effusion", "pleural_effusion", 0.02),
    LabelSpec("costophrenic angle blunting", "pleural_effusion", 0.06),
    LabelSpec("nodule", "nodule", 0.1),
    LabelSpec("multiple nodules", "nodule", 0.02),
    LabelSpec("pulmonary mass", "mass", 0.04),
    LabelSpec("consolidation", "consolidation", 0.15),
    LabelSpec("pneumonia", "opacity", 0.15),
    LabelSpec("infiltrates", "opacity", 0.12),
    LabelSpec("alveolar pattern", "opacity", 0.06),
    LabelSpec("increased density", "opacity", 0.05),
    LabelSpec("interstitial pattern", "fibrosis", 0.1),
    LabelSpec("atelectasis", "atelectasis", 0.04),
    LabelSpec("laminar atelectasis", "atelectasis", 0.08),
    LabelSpec("pneumothorax", "pneumothorax", 0.03),
    LabelSpec("pulmonary edema", "edema", 0.04),
    LabelSpec("hilar congestion", "edema", 0.03),
    LabelSpec("emphysema", "emphysema", 0.04),
    LabelSpec("COPD signs", "emphysema", 0.2),
    LabelSpec("pulmonary fibrosis", "fibrosis", 0.04),
    LabelSpec("apical pleural thickening", "pleural_thickening", 0.08),
    LabelSpec("pleural thickening", "pleural_thickening", 0.03),
    LabelSpec("hiatal hernia", "hernia", 0.04),
    LabelSpec("rib fracture", None, 0.02),
    LabelSpec("callus rib fracture", None, 0.05),
    LabelSpec("NSG tube", "support_devices", 0.06),
    LabelSpec("pacemaker", "support_devices", 0.06),
    LabelSpec("endotracheal tube", "support_devices", 0.03),
    LabelSpec("aortic elongation", "aortic_enlargement", 0.15),
    LabelSpec("mediastinal enlargement", "enlarged_cardiomediastinum", 0.02),
    LabelSpec("calcified granuloma", "calcification", 0.05),
    LabelSpec("scoliosis", None, 0.3, control=True),  # negative controls: never drawn
    LabelSpec("kyphosis", None, 0.3, control=True),
    LabelSpec("chronic changes", None, 0.1),
    LabelSpec("unchanged", None, 0.1),
    LabelSpec("vertebral degenerative changes", None, 0.05),
    LabelSpec("air trapping", None, 0.05),
    LabelSpec("subcutaneous emphysema", None, 0.01),
    LabelSpec("pseudonodule", None, 0.03),
)
# UMLS CUIs of the labels and localisations that have one here (others contribute nothing).
_CUI = {"cardiomegaly": "C0018800", "pleural effusion": "C0032227", "pneumonia": "C0032285",
        "atelectasis": "C0004144", "pneumothorax": "C0032326", "pulmonary fibrosis": "C0034069",
        "hiatal hernia": "C0019291", "pulmonary edema": "C0034063", "consolidation": "C0521530",
        "chronic changes": "C0742362", "loc right": "C0205090", "loc left": "C0205091"}
_STEM = {"cardiomegaly": "cardiomegali", "pleural effusion": "derram pleural", "nodule": "nodul pulmonar",
         "pneumonia": "neumoni", "infiltrates": "infiltr", "consolidation": "consolid", "atelectasis": "atelectasi",
         "laminar atelectasis": "atelectasi laminar", "pneumothorax": "neumotorax", "COPD signs": "sign epoc",
         "aortic elongation": "elong aort", "scoliosis": "escoliosis", "unchanged": "sin cambi"}
_LOCATED = {"pleural_effusion", "nodule", "mass", "consolidation", "opacity", "atelectasis", "pneumothorax",
            "pleural_thickening", "fracture", "calcification"}
_PROJECTION_DICOM = {"PA": ("POSTEROANTERIOR", "PA", "nan"), "L": ("LATERAL", "LL", "nan"),
                     "AP": ("AP", "ANTEROPOSTERIOR", "nan"), "AP_horizontal": ("nan",), "COSTAL": ("nan",)}
SIZE = (288, 256)


def _digits(rng: np.random.Generator, n: int) -> str:
    """A long decimal string without a leading zero (PadChest ids are 36-39 digits)."""
    return str(int(rng.integers(1, 10))) + "".join(str(int(d)) for d in rng.integers(0, 10, size=n - 1))


def _list_str(items: list[str]) -> str:
    """Python-list-like string, as in ``Labels``."""
    return str(items)


def _cui_str(cuis: list[str]) -> str:
    """numpy-style list without commas, as in ``labelCUIS``."""
    return "[" + " ".join(f"'{c}'" for c in cuis) + "]"


def _study_text(rng: np.random.Generator, labels: list[str], findings: list) -> dict[str, str]:
    """``Report``, ``Labels`` and the localisation columns of one study."""
    if not labels:
        return {"Report": " sin hallazg patolog edad pacient .", "Labels": "['normal']", "Localizations": "[]",
                "LabelsLocalizationsBySentence": "[['normal'], ['normal']]", "labelCUIS": "[]",
                "LocalizationsCUIS": "[]"}
    side_of = {f.name: f.side for f in findings}
    spec = {s.label: s.finding for s in LABELS}
    items, sentences, locs = [], [], []
    for i, lab in enumerate(labels):
        name = spec.get(lab)
        loc = []
        if name in _LOCATED:
            loc = {"R": ["loc right"], "L": ["loc left"], "B": ["loc bilateral"]}[side_of.get(name, "B")]
        locs += [x for x in loc if x not in locs]
        sentences.append([lab, *loc])
        items.append(" " + lab if i > 0 and rng.random() < 0.25 else lab)  # leading spaces occur in the source
    if rng.random() < 0.03:
        items.insert(int(rng.integers(0, len(items) + 1)), "")
    report = " " + " . ".join(_STEM.get(lab, lab.split()[0][:6]) for lab in labels) + " ."
    return {
        "Report": report,
        "Labels": _list_str(items),
        "Localizations": _list_str(locs),
        "LabelsLocalizationsBySentence": str(sentences),
        "labelCUIS": _cui_str([_CUI[lab] for lab in labels if lab in _CUI]),
        "LocalizationsCUIS": _cui_str([_CUI[x] for x in locs if x in _CUI]),
    }


def write(root: Path, *, seed: int, n_images: int, identifiers: Identifiers) -> dict[str, int]:
    """Write the dataset under ``root`` (= ``padchest``); returns counts."""
    del identifiers  # PNGs carry no identifying header
    rng = dataset_rng(seed, NAME)
    rows: list[dict[str, object]] = []
    index = 0
    for per_patient in allocate_images(rng, n_images, max_per_patient=5):
        anatomy = Anatomy.sample(rng)
        patient_id = _digits(rng, int(rng.integers(36, 40)))
        pediatric = rng.random() < 0.03
        sex = str(rng.choice(["M", "F", "O"], p=[0.5, 0.49, 0.01]))
        remaining = per_patient
        year = int(rng.integers(2009, 2017))
        while remaining > 0:
            study_id = _digits(rng, int(rng.integers(36, 40)))
            labels = sample_positive_labels(rng, LABELS, p_normal=0.35)
            findings = findings_from_labels(rng, labels, LABELS)
            text = _study_text(rng, labels, findings)
            if rng.random() < 0.01:
                text["Labels"] = "['exclude']" if rng.random() < 0.5 else text["Labels"][:-1] + ", 'suboptimal study']"
            kind = rng.random()
            projections = (["PA", "L"] if kind < 0.55 else ["PA"] if kind < 0.7 else ["AP_horizontal"] if kind < 0.85
                           else ["AP"] if kind < 0.97 else ["COSTAL"])[:remaining]
            remaining -= len(projections)
            date = f"{year}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
            year = min(year + 1, 2017)
            method_label = "Physician" if rng.random() < 0.27 else "RNN_model"
            report_id = str(int(rng.integers(4_000_000, 5_400_000)))
            birth = f"{year - int(rng.integers(3, 16) if pediatric else rng.integers(20, 95))}.0"
            philips = rng.random() < 0.75
            for proj in projections:
                bits = 10 if rng.random() < 0.1 else 12
                image_id = (f"{study_id}_{''.join(rng.choice(list('abcdefghijklmnopqrstuvwxyz0123456789'), 6))}.png"
                            if rng.random() < 0.5 else
                            f"216840111366964{_digits(rng, 30)}_{int(rng.integers(0, 5)):02d}-"
                            f"{int(rng.integers(0, 130)):03d}-{int(rng.integers(0, 200)):03d}.png")
                image_dir = int(rng.choice([*range(51), 54]))
                none_or = (lambda v: "None" if rng.random() < 0.3 else v)
                rows.append({
                    "": index, "ImageID": image_id, "ImageDir": image_dir, "StudyDate_DICOM": date,
                    "StudyID": study_id, "PatientID": patient_id, "PatientBirth": birth, "PatientSex_DICOM": sex,
                    "ViewPosition_DICOM": str(rng.choice(_PROJECTION_DICOM[proj])), "Projection": proj,
                    "MethodProjection": "resnet-50.t7" if rng.random() < 0.1 else "Manual review of DICOM fields",
                    "Pediatric": "PED" if pediatric else "No", "Modality_DICOM": "CR" if philips else "DX",
                    "Manufacturer_DICOM": "PhilipsMedicalSystems" if philips else "ImagingDynamicsCompanyLtd",
                    "PhotometricInterpretation_DICOM": "MONOCHROME2", "PixelRepresentation_DICOM": 0,
                    "PixelAspectRatio_DICOM": "['1', '1']" if philips else "None",
                    "SpatialResolution_DICOM": "0.143" if philips else "None", "BitsStored_DICOM": bits,
                    "WindowCenter_DICOM": f"{2 ** (bits - 1) - 0.5}" if philips else str(int(rng.integers(1800, 2600))),
                    "WindowWidth_DICOM": f"{2.0 ** bits - 1}" if philips else str(int(rng.integers(1800, 2600))),
                    "Rows_DICOM": SIZE[0], "Columns_DICOM": SIZE[1],
                    "XRayTubeCurrent_DICOM": none_or(str(int(rng.choice([250, 320, 400, 500])))),
                    "Exposure_DICOM": none_or(str(int(rng.integers(1, 10)))),
                    "ExposureInuAs_DICOM": str(int(rng.choice([1500, 2000, 2500, 3200]))),
                    "ExposureTime": str(int(rng.integers(5, 26))),
                    "RelativeXRayExposure_DICOM": none_or(f"{rng.uniform(-2, 0):.2f}"),
                    "ReportID": report_id, "MethodLabel": method_label, **text,
                })
                img, _ = render_image(seed, NAME, index, findings, anatomy, SIZE, lateral=proj == "L")
                save_png16(root / str(image_dir) / image_id, img, bits_stored=bits)
                index += 1
    df = pd.DataFrame(rows, columns=COLUMNS)
    if len(df) > 100:
        df.loc[len(df) // 2, "Labels"] = None  # ~0.06% of real rows have no Labels value
    write_csv(df, root / LABEL_FILE)
    return {"images": len(df), "patients": df["PatientID"].nunique(), "studies": df["StudyID"].nunique()}
