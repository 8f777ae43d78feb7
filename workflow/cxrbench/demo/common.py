"""Shared pieces of the demo writers: seeding, label sampling, image encoders, DICOM, CSV output.

Determinism: every random draw comes from ``numpy.random.default_rng([seed, dataset code, ...])``;
label tables are drawn in one fixed order per dataset and each image is rendered from its own
generator, so the same seed gives byte-identical label files and images.
"""

from __future__ import annotations

import gzip
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import get_encoder
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    generate_uid,
)

from cxrbench.demo.phantom import Anatomy, Finding, render

__all__ = [
    "DATASET_CODES",
    "FIXED_IDENTIFIERS",
    "DicomImage",
    "Identifiers",
    "LabelSpec",
    "allocate_images",
    "check_encoders",
    "dataset_rng",
    "findings_from_labels",
    "image_rng",
    "pick_transfer_syntax",
    "render_image",
    "sample_positive_labels",
    "save_jpeg",
    "save_png8",
    "save_png16",
    "to_uint8",
    "write_csv",
    "write_dicom",
]

_logger = logging.getLogger(__name__)

# Stable per-dataset stream codes: adding a dataset never moves another one's random numbers.
DATASET_CODES: dict[str, int] = {"vindr": 1, "chestxray14": 2, "chexpert": 3, "mimic": 4, "padchest": 5, "uka": 6}

# Findings whose side matters for drawing; the others are drawn where the phantom puts them.
_LATERALISED = {"pleural_effusion", "pneumothorax", "atelectasis", "opacity", "consolidation", "nodule", "mass",
                "pleural_thickening", "fracture", "calcification"}

# Identifying values every demo DICOM carries (see :func:`write_dicom`); writers register them once.
REFERRER = "FAKE^REFERRER"
INSTITUTION = "FAKE DEMO HOSPITAL"
FIXED_IDENTIFIERS = (REFERRER, INSTITUTION)

CR_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")
DX_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray Image Storage - For Presentation
# Transfer syntaxes written, each with the share of images it gets (uncompressed most often).
TRANSFER_SYNTAXES: tuple[tuple[UID, float], ...] = (
    (ExplicitVRLittleEndian, 0.4),
    (JPEG2000Lossless, 0.3),
    (JPEGLSLossless, 0.3),
)


def dataset_rng(seed: int, dataset: str, stream: int = 0) -> np.random.Generator:
    """Generator for a dataset's tables (``stream`` separates independent draws)."""
    return np.random.default_rng([seed, DATASET_CODES[dataset], stream])


def image_rng(seed: int, dataset: str, index: int) -> np.random.Generator:
    """Generator for one image's pixels (independent of how many images come before it)."""
    return np.random.default_rng([seed, DATASET_CODES[dataset], 1_000_000 + index])


@dataclass(frozen=True)
class LabelSpec:
    """A native label: its phantom drawing (None = not drawn) and prevalence among abnormal images.

    ``control`` marks a negative control: never drawn, and positive with probability ``prevalence`` on
    every image independently of all other labels (normal images included), so no image feature, not
    even "looks abnormal", predicts it and its true AUROC is 0.5 (docs/demo-data.md, known answer).
    """

    label: str
    finding: str | None
    prevalence: float
    control: bool = False

    def __post_init__(self) -> None:
        if self.control and self.finding is not None:
            raise ValueError(f"negative control {self.label!r} must not be drawn")


def sample_positive_labels(
    rng: np.random.Generator, specs: Sequence[LabelSpec], *, p_normal: float
) -> list[str]:
    """Positive native labels of one image: no drawn finding with probability ``p_normal``, else at least
    one; negative controls are drawn independently of that (see :class:`LabelSpec`)."""
    controls = [s for s in specs if s.control]
    drawn = [s for s in specs if not s.control]
    # Controls first, from their own draws, so whether an image is normal cannot depend on them.
    control_pos = {s.label for s in controls if rng.random() < s.prevalence}
    positives: set[str] = set()
    if rng.random() >= p_normal:
        prev = np.array([s.prevalence for s in drawn])
        pos = rng.random(len(drawn)) < prev
        if not pos.any():
            pos[rng.choice(len(drawn), p=prev / prev.sum())] = True
        positives = {s.label for s, p in zip(drawn, pos, strict=True) if p}
    return [s.label for s in specs if s.label in positives | control_pos]  # in the dataset's label order


def findings_from_labels(
    rng: np.random.Generator, labels: Sequence[str], specs: Sequence[LabelSpec], *, severity: float = 1.0
) -> list[Finding]:
    """Phantom findings drawing the given native labels (one drawing per finding, random side)."""
    by_label = {s.label: s.finding for s in specs}
    out: dict[str, Finding] = {}
    for label in labels:
        name = by_label[label]
        if name is None or name in out:
            continue
        side = str(rng.choice(["R", "L", "B"], p=[0.4, 0.35, 0.25])) if name in _LATERALISED else "B"
        out[name] = Finding(name, side, severity)
    return list(out.values())


def allocate_images(rng: np.random.Generator, n_images: int, *, max_per_patient: int = 5) -> list[int]:
    """Images per patient summing to ``n_images``; about a third of patients have several."""
    counts: list[int] = []
    while sum(counts) < n_images:
        k = 1 if rng.random() < 0.6 else int(rng.integers(2, max_per_patient + 1))
        counts.append(min(k, n_images - sum(counts)))
    return counts


def render_image(
    seed: int,
    dataset: str,
    index: int,
    findings: list[Finding],
    anatomy: Anatomy,
    shape: tuple[int, int],
    *,
    lateral: bool = False,
) -> tuple[np.ndarray, dict[str, tuple[float, float, float, float]]]:
    """Render one image from its own generator (see :func:`image_rng`)."""
    rng = image_rng(seed, dataset, index)
    return render(findings, anatomy=anatomy.jitter(rng), rng=rng, shape=shape, lateral=lateral)


# --- images -----------------------------------------------------------------------------------------


def to_uint8(img: np.ndarray) -> np.ndarray:
    """[0, 1] float image -> uint8 (rounded)."""
    return np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def save_png8(path: Path, img: np.ndarray, *, rgba: bool = False) -> None:
    """8-bit grey PNG (or RGBA with equal channels and opaque alpha, as a few NIH files are); no metadata."""
    im = Image.fromarray(to_uint8(img), mode="L")
    if rgba:
        im = im.convert("RGBA")
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format="PNG", optimize=False)


def save_jpeg(path: Path, img: np.ndarray, *, quality: int, equalise: bool = False) -> None:
    """8-bit grey JPEG; ``equalise`` applies global histogram equalisation first (MIMIC-CXR-JPG)."""
    im = Image.fromarray(to_uint8(img), mode="L")
    if equalise:
        im = ImageOps.equalize(im)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format="JPEG", quality=quality)


def save_png16(path: Path, img: np.ndarray, *, bits_stored: int) -> None:
    """16-bit grey PNG using only ``bits_stored`` significant bits (PadChest: 12, sometimes 10)."""
    arr = np.rint(np.clip(img, 0.0, 1.0) * (2**bits_stored - 1)).astype(np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG", compress_level=1)  # noisy 16-bit data barely compresses


# --- DICOM ------------------------------------------------------------------------------------------


@dataclass
class Identifiers:
    """Every fake patient-identifying value written into a DICOM (the archive stage checks none leaks)."""

    values: set[str] = field(default_factory=set)

    def add(self, *values: str) -> None:
        self.values.update(v for v in values if v)

    def sorted(self) -> list[str]:
        return sorted(self.values)


@dataclass(frozen=True)
class DicomImage:
    """Header facts of one demo DICOM."""

    key: str  # unique per file; seeds the UIDs
    modality: str  # CR / DX
    view: str  # PA / AP
    photometric: str  # MONOCHROME1 / MONOCHROME2
    bits_stored: int
    transfer_syntax: UID
    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    accession: str
    study_date: str
    study_key: str
    rescale_intercept: float = 0.0


def write_dicom(path: Path, img: np.ndarray, meta: DicomImage) -> None:
    """Write ``img`` ([0, 1], display convention) as a chest CR/DX DICOM with the given header facts.

    MONOCHROME1 stores the inverted values. The window covers the 1st-99th percentile of modality
    values. UIDs derive from ``meta.key`` so the file is reproducible.
    """
    maxv = 2**meta.bits_stored - 1
    stored = np.rint(np.clip(img, 0.0, 1.0) * maxv).astype(np.uint16)
    if meta.photometric == "MONOCHROME1":
        stored = (maxv - stored).astype(np.uint16)
    lo, hi = np.percentile(stored, [1, 99]) + meta.rescale_intercept
    sop_class = CR_STORAGE if meta.modality == "CR" else DX_STORAGE

    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = sop_class
    file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[meta.key, "sop"])
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = file_meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[meta.study_key, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[meta.key, "series"])
    ds.Modality = meta.modality
    ds.StudyDate = meta.study_date
    ds.SeriesDate = meta.study_date
    ds.StudyTime = "101500"
    ds.AccessionNumber = meta.accession
    ds.ReferringPhysicianName = REFERRER
    ds.InstitutionName = INSTITUTION
    ds.PatientName = meta.patient_name
    ds.PatientID = meta.patient_id
    ds.PatientBirthDate = meta.birth_date
    ds.PatientSex = meta.sex
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = meta.view
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["R", "F"] if meta.view == "AP" else ["L", "F"]
    ds.ImagerPixelSpacing = [0.8, 0.8]
    ds.RescaleIntercept = f"{meta.rescale_intercept:g}"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.WindowCenter = f"{(lo + hi) / 2:.1f}"
    ds.WindowWidth = f"{max(hi - lo, 1.0):.1f}"
    ds.set_pixel_data(stored, meta.photometric, meta.bits_stored, generate_instance_uid=False)
    if meta.transfer_syntax != ExplicitVRLittleEndian:
        ds.compress(meta.transfer_syntax, generate_instance_uid=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def check_encoders() -> None:
    """Fail before writing anything if pydicom lacks an encoder for a transfer syntax we write."""
    missing = {uid.name: get_encoder(uid).missing_dependencies for uid, _ in TRANSFER_SYNTAXES
               if uid != ExplicitVRLittleEndian and not get_encoder(uid).is_available}
    if missing:
        raise RuntimeError(f"demo DICOMs need pydicom encoders that are not installed: {missing} "
                           "(pip install pylibjpeg-openjpeg pyjpegls)")


def pick_transfer_syntax(rng: np.random.Generator) -> UID:
    """One of :data:`TRANSFER_SYNTAXES` by its share."""
    uids, shares = zip(*TRANSFER_SYNTAXES, strict=True)
    return uids[int(rng.choice(len(uids), p=np.array(shares)))]


# --- tables -----------------------------------------------------------------------------------------


def write_csv(df: pd.DataFrame, path: Path, *, index: bool = False) -> None:
    """CSV with ``\\n`` line ends; ``.gz`` paths get a gzip stream with a zero timestamp (reproducible)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = df.to_csv(index=index, lineterminator="\n")
    if path.suffix == ".gz":
        buf = io.BytesIO()
        with gzip.GzipFile(filename=path.stem, mode="wb", fileobj=buf, mtime=0) as gz:
            gz.write(text.encode("utf-8"))
        path.write_bytes(buf.getvalue())
    else:
        path.write_text(text, encoding="utf-8")
