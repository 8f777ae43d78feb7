"""``cxrbench archive``: one publication tarball of a finished run, safe to share.

The tarball (``<name>/`` inside) holds the evaluation tables, figures (PDF), statistics (metrics,
bootstrap indices, resamples, tests), every run's predictions, history and run.json, the results
README, the resolved config, software versions and the git commit, the Snakemake report, the workflow
source, a SHA-256 manifest of every file and an RO-Crate (Workflow Run Crate profile).

It never holds images, DICOMs, JPEGs, source label files, the harmonised label tables or anything
under a dataset's ``png/`` or ``cache/`` folder (the Snakemake report may embed plot PNGs): files are
picked from an allow-list of the results layout (:class:`cxrbench.paths.Layout`), and every picked
file is checked again by name, location and content (magic bytes, label-file checksums).

Image and patient ids are published as keyed hashes (``archive.identifiers: pseudonymise``, HMAC-SHA256
under a project key kept outside ``results/``) or as they are (``keep``). Then every file, including
the report and the metadata written here, is scanned for the patient-identifying values found in the
DICOM headers of the configured datasets (names, IDs, birth dates, accession numbers, instance UIDs);
one hit fails the archive. DICOM sources are found by content, not by name; a source whose header
cannot be read is quarantined (logged, listed in the crate), not fatal. ``cxrbench verify`` re-checks
an unpacked archive.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import gzip
import hashlib
import hmac
import importlib.metadata
import json
import logging
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cxrbench.config import REPO_ROOT, load_schema, parse_settings
from cxrbench.paths import Layout

_logger = logging.getLogger(__name__)

__all__ = [
    "CRATE_NAME",
    "ID_COLUMNS",
    "MANIFEST_NAME",
    "PHI_TAGS",
    "ArchiveError",
    "IdentifierIndex",
    "Quarantined",
    "SourceScan",
    "archive_options",
    "build_archive",
    "collect_files",
    "demo_identifiers",
    "forbidden_reason",
    "header_identifiers",
    "identifier_leaks",
    "load_secret",
    "pseudonym",
    "pseudonymise_table",
    "scan_file",
    "scan_sources",
    "sha256_file",
    "sniff",
]

MANIFEST_NAME = "MANIFEST.sha256"
CRATE_NAME = "ro-crate-metadata.json"
# DICOM attributes whose values identify a patient (or point to one: the accession number).
PHI_TAGS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "AccessionNumber",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "MedicalRecordLocator",
    # Instance UIDs are unique per study/series/image and link back to the hospital's records.
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
)
_DATE_TAGS = {"PatientBirthDate"}
# Elements every radiograph header has: a header-less file without any of them is not a DICOM.
_HEADER_PROBES = ("SOPClassUID", "Modality", "Rows", "Columns", "PhotometricInterpretation")
# Columns of published tables that hold image or patient ids (predictions, bootstrap units).
ID_COLUMNS = ("image_id", "patient_id", "unit_id")
IDENTIFIER_MODES = ("pseudonymise", "keep")
# Values that carry no identity (anonymised placeholders); shorter values are too ambiguous to search.
_PLACEHOLDERS = {"anonymous", "anonymized", "anonymised", "anon", "unknown", "none", "null", "removed", "n/a"}
_MIN_ALNUM = 4

FORBIDDEN_SUFFIXES = {
    ".png": "PNG image",
    ".jpg": "JPEG image",
    ".jpeg": "JPEG image",
    ".dcm": "DICOM file",
    ".dicom": "DICOM file",
    ".dic": "DICOM file",
    ".j2k": "JPEG 2000 image",
    ".jp2": "JPEG 2000 image",
    ".tif": "TIFF image",
    ".tiff": "TIFF image",
    ".pt": "model weights",
    ".pth": "model weights",
    ".safetensors": "model weights",
}
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "PNG image"),
    (0, b"\xff\xd8\xff", "JPEG image"),
    (128, b"DICM", "DICOM file"),
    (0, b"\x00\x00\x00\x0cjP  ", "JPEG 2000 image"),
    (0, b"\xff\x4f\xff\x51", "JPEG 2000 codestream"),
    (0, b"II*\x00", "TIFF image"),
    (0, b"MM\x00*", "TIFF image"),
)

# Results files of each stage that go into the archive (relative to the stage folder).
RUN_FILES = ("predictions.parquet", "history.csv", "run.json")
STATS_SUFFIXES = {".parquet", ".csv", ".json", ".npy", ".md"}
TABLE_SUFFIXES = {".csv", ".md", ".tex"}
FIGURE_SUFFIXES = {".pdf", ".svg"}


class ArchiveError(RuntimeError):
    """The archive would contain something it must not (or cannot be built); names the file and why."""


# --- what goes in -------------------------------------------------------------------------------


def collect_files(results: Path, *, datasets: Iterable[str]) -> list[tuple[Path, str]]:
    """Allow-listed result files as (source path, path inside the archive), sorted by archive path.

    Only the publication layer of :class:`Layout` is read: tables, figures (PDF/SVG, never PNG),
    ``stats/<ds>/**`` (every cell), the label summaries, the results README and each run's predictions, history and
    run.json (fine-tuning and pre-training). Images, caches, label tables and weights are never picked.
    """
    layout = Layout(results)
    picked: dict[str, Path] = {}

    def add(path: Path) -> None:
        if path.is_file():
            picked["results/" + path.relative_to(layout.root).as_posix()] = path

    for path in sorted(layout.tables_dir().glob("**/*")):
        if path.suffix.lower() in TABLE_SUFFIXES:
            add(path)
    for path in sorted(layout.figures_dir().glob("**/*")):
        if path.suffix.lower() in FIGURE_SUFFIXES:
            add(path)
    for ds in datasets:
        for path in sorted((layout.stats_root() / ds).glob("**/*")):  # every cell of the dataset
            if path.suffix.lower() in STATS_SUFFIXES:
                add(path)
        for ext in ("csv", "md"):
            add(layout.labels_summary(ds, ext))
    for base in (layout.root / "runs", layout.root / "pretrain"):
        for name in RUN_FILES:
            for path in sorted(base.glob(f"**/{name}")):
                add(path)
    add(layout.root / "README.md")
    return sorted(((src, rel) for rel, src in picked.items()), key=lambda item: item[1])


def forbidden_reason(
    path: Path,
    rel: str,
    *,
    label_file_names: set[str],
    label_file_hashes: set[str],
) -> str | None:
    """Why ``path`` (archived as ``rel``) must not be archived, or None when it may be."""
    parts = Path(rel).parts
    for folder in ("png", "cache"):
        if folder in parts[1:-1]:
            return f"it lies under a dataset's {folder}/ folder"
    kind = FORBIDDEN_SUFFIXES.get(path.suffix.lower())
    if kind:
        return f"it is a {kind} ({path.suffix})"
    with open(path, "rb") as fh:
        head = fh.read(144)
    for offset, magic, kind in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return f"its content is a {kind}"
    if path.name in label_file_names:
        return "it has the name of a source label file"
    if label_file_hashes and sha256_file(path) in label_file_hashes:
        return "it is a copy of a source label file"
    if path.name in {"index.parquet", "labels.parquet"}:
        return "it is a per-image label table derived from the source label files"
    return None


# --- patient-identifying values ----------------------------------------------------------------

_TOKEN = re.compile(r"\d+\.\d+(?:[eE][-+]?\d+)?|[^\W_]+")


def _tokens(text: str) -> list[str]:
    """Lower-case word tokens; a decimal number is one token (so 0.8123456789 never matches an ID)."""
    return [t.lower() for t in _TOKEN.findall(text)]


@dataclass
class IdentifierIndex:
    """Patient-identifying values, matched as whole token sequences (separators and case ignored).

    ``DOE^JANE`` matches "doe jane" and "DOE_JANE" but not "DOE^JANET"; a DICOM date ``19450312`` also
    matches "1945-03-12".
    """

    values: dict[tuple[str, ...], str] = field(default_factory=dict)

    @classmethod
    def build(cls, identifiers: Iterable[str], *, dates: Iterable[str] = ()) -> IdentifierIndex:
        index = cls()
        for value in identifiers:
            index.add(value)
        for value in dates:
            index.add(value)
            if re.fullmatch(r"\d{8}", value.strip()):
                v = value.strip()
                index.add(f"{v[:4]}-{v[4:6]}-{v[6:]}", original=value)
        return index

    def add(self, value: str, *, original: str | None = None) -> None:
        text = str(value).strip()
        if not text or text.lower() in _PLACEHOLDERS:
            return
        toks = tuple(_tokens(text))
        if sum(len(t) for t in toks) < _MIN_ALNUM:
            return
        self.values.setdefault(toks, original or text)

    def __len__(self) -> int:
        return len(self.values)

    def find(self, text: str) -> set[str]:
        """The identifiers (as first seen) that occur in ``text``."""
        if not self.values:
            return set()
        toks = _tokens(text)
        firsts = {k[0] for k in self.values}
        if firsts.isdisjoint(toks):
            return set()
        hits: set[str] = set()
        for n in sorted({len(k) for k in self.values}):
            grams = set(zip(*(toks[i:] for i in range(n)), strict=False))
            hits.update(self.values[g] for g in grams if g in self.values)
        return hits


class UnreadableHeader(Exception):
    """A source whose DICOM header cannot be read; it is quarantined (listed), not checked."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Quarantined:
    """A source the header scan could not read: named in the archive log and in the RO-Crate."""

    dataset: str
    image_id: str
    path: Path
    reason: str  # a fixed phrase (it goes into the crate); ``detail`` (log only) may quote pydicom
    detail: str = ""


@dataclass
class SourceScan:
    """The identifying header values of a run's sources and the sources that could not be read."""

    values: dict[str, str] = field(default_factory=dict)  # value -> DICOM keyword it came from
    quarantined: list[Quarantined] = field(default_factory=list)
    headers_read: int = 0
    # dataset -> (image ids, patient ids) from its index.parquet: what pseudonymisation maps.
    ids: dict[str, tuple[set[str], set[str]]] = field(default_factory=dict)


def sniff(path: Path) -> str:
    """What a source is by content: ``missing``, ``empty``, ``image`` (PNG/JPEG/JPEG 2000/TIFF magic),
    ``dicom`` (128-byte preamble + ``DICM``) or ``unknown`` (maybe a header-less ACR-NEMA file)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(144)
    except OSError:  # absent, a broken link, a folder, unreadable
        return "missing"
    if not head:
        return "empty"
    if head[128:132] == b"DICM":
        return "dicom"
    if any(head[offset : offset + len(magic)] == magic for offset, magic, _ in _MAGIC):
        return "image"
    return "unknown"


def header_identifiers(path: Path, *, headerless: bool = False) -> dict[str, str]:
    """The identifying values in the DICOM header of ``path``, each with its attribute keyword.

    Pixels are not read; birth dates are under ``PatientBirthDate`` (:data:`_DATE_TAGS`).

    ``headerless``: the file has no preamble/``DICM`` marker; it counts as a DICOM only when pydicom
    finds header elements in it, as preprocessing decides (:func:`cxrbench.imaging.decode.decode`).

    Raises:
        UnreadableHeader: pydicom cannot parse the header, or a header-less file holds no DICOM elements.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True, specific_tags=[*PHI_TAGS, *_HEADER_PROBES])
        present = [tag for tag in (*PHI_TAGS, *_HEADER_PROBES) if tag in ds]
        if headerless and not present:
            raise UnreadableHeader("no DICOM header elements (not PNG, JPEG or DICOM)")
        values: dict[str, str] = {}
        for tag in PHI_TAGS:
            if tag not in present or ds[tag].value in (None, ""):
                continue
            elem = ds[tag]
            for item in elem.value if elem.VM > 1 else [elem.value]:
                text = str(item).strip()
                if text:
                    values.setdefault(text, tag)
                    if "^" in text:  # person names: also the family^given parts joined by a space
                        values.setdefault(" ".join(p for p in text.split("^") if p), tag)
    except UnreadableHeader:
        raise
    except Exception as exc:  # pydicom raises many types on garbage; the caller quarantines the source
        raise UnreadableHeader("DICOM header unreadable", f"{type(exc).__name__}: {exc}") from exc
    return values


def _manifest_formats(layout: Layout, ds: str) -> dict[str, str]:
    """image id -> ``source_format`` from every preprocessing manifest of ``ds`` (``dicom`` wins)."""
    import pyarrow.parquet as pq

    formats: dict[str, str] = {}
    for manifest in sorted(layout.dataset_dir(ds).glob("png/*/manifest.parquet")):
        table = pq.read_table(manifest, columns=["image_id", "source_format"]).to_pydict()
        for image_id, fmt in zip(table["image_id"], table["source_format"], strict=True):
            if fmt is not None and formats.get(str(image_id)) != "dicom":
                formats[str(image_id)] = str(fmt)
    return formats


def scan_sources(results: Path, datasets: dict[str, dict[str, Any]], *, base: Path | None = None) -> SourceScan:
    """Read the identifying header values of every DICOM source of every configured dataset.

    A source is a DICOM when preprocessing decoded it as one (``source_format`` in the manifests) or
    its content says so (``DICM`` marker, or a header-less file with DICOM elements), whatever its
    name. Sources whose format preprocessing already established as PNG/JPEG are not opened. A
    missing, empty or unparseable source is quarantined: listed, not fatal. ``base`` resolves relative
    dataset roots (default: the current directory).

    Raises:
        ArchiveError: a dataset's index.parquet is missing.
    """
    import pyarrow.parquet as pq

    layout = Layout(results)
    scan = SourceScan()
    for name, entry in datasets.items():
        index = layout.index(name)
        if not index.is_file():
            raise ArchiveError(f"{index} is missing: cannot list dataset {name!r}'s sources for the PHI check")
        root = Path(base or ".") / entry["root"]
        formats = _manifest_formats(layout, name)
        table = pq.read_table(index, columns=["image_id", "patient_id", "source_path"]).to_pydict()
        image_ids = {str(v) for v in table["image_id"] if v is not None}
        patient_ids = {str(v) for v in table["patient_id"] if v is not None}
        scan.ids[name] = (image_ids, patient_ids)
        for image_id, rel in zip(table["image_id"], table["source_path"], strict=True):
            image_id = str(image_id)
            fmt = formats.get(image_id)
            if fmt is not None and fmt != "dicom":
                continue  # preprocessing decoded its content as PNG/JPEG
            path = root / str(rel)
            kind = sniff(path)
            if kind == "image":
                continue
            if kind in ("missing", "empty"):
                scan.quarantined.append(Quarantined(name, image_id, path, f"source file is {kind}"))
                continue
            try:
                # Without the DICM marker the content must show DICOM elements; a real header-less
                # ACR-NEMA radiograph always has some (Rows at least), garbage has none.
                values = header_identifiers(path, headerless=kind == "unknown")
            except UnreadableHeader as exc:
                scan.quarantined.append(Quarantined(name, image_id, path, exc.reason, exc.detail))
                continue
            scan.headers_read += 1
            for value, tag in values.items():
                scan.values.setdefault(value, tag)
    for q in scan.quarantined:
        _logger.warning(
            "quarantined source (not checked for identifiers): dataset %s, image %s, %s: %s%s",
            q.dataset,
            q.image_id,
            q.path,
            q.reason,
            f" ({q.detail})" if q.detail else "",
        )
    _logger.info(
        "read %d DICOM headers: %d identifying values; %d sources quarantined",
        scan.headers_read,
        len(scan.values),
        len(scan.quarantined),
    )
    return scan


# --- pseudonymous identifiers --------------------------------------------------------------------


def pseudonym(key: bytes, value: str) -> str:
    """The published form of an image or patient id: hex HMAC-SHA256 of the id under the project key."""
    return hmac.new(key, str(value).encode("utf-8"), hashlib.sha256).hexdigest()


def load_secret(path: Path, *, results: Path) -> bytes:
    """The project key at ``path``, created (32 random bytes, hex, mode 0600) on first use.

    Raises:
        ArchiveError: the key would lie inside the results folder (and so next to, or inside, the
            archive), or the file is not a 64-digit hex key.
    """
    path = Path(path)
    if path.resolve().is_relative_to(Path(results).resolve()):
        raise ArchiveError(
            f"config key 'archive.secret' ({path}) lies inside the results folder {results}: the key must be kept "
            "outside results/ and outside the archive"
        )
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(secrets.token_hex(32) + "\n")
        _logger.warning("created the pseudonymisation key %s (keep it, never publish it)", path)
    elif path.stat().st_mode & 0o077:
        _logger.warning("%s is readable by other users; run: chmod 600 %s", path, path)
    text = path.read_text(encoding="ascii", errors="replace").strip()
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise ArchiveError(f"{path} (config key 'archive.secret') is not a 64-digit hex key")
    return bytes.fromhex(text)


def pseudonymise_table(path: Path, key: bytes) -> int:
    """Replace every value of the id columns (:data:`ID_COLUMNS`) of a Parquet or CSV file in place.

    Returns the number of columns rewritten. Other columns, schema metadata and row order are kept.
    """
    if path.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        cols = [c for c in ID_COLUMNS if c in table.column_names]
        for col in cols:
            i = table.column_names.index(col)
            values = [None if v is None else pseudonym(key, v) for v in table.column(i).to_pylist()]
            # Pseudonyms are strings whatever the id column held (integer ids included).
            table = table.set_column(i, table.schema.field(i).with_type(pa.string()), pa.array(values, pa.string()))
        if cols:
            pq.write_table(table, path)
        return len(cols)
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    cols = [i for i, name in enumerate(rows[0] if rows else []) if name in ID_COLUMNS]
    if cols:
        for row in rows[1:]:
            for i in cols:
                if i < len(row) and row[i] != "":
                    row[i] = pseudonym(key, row[i])
        with open(path, "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh, lineterminator="\n").writerows(rows)
    return len(cols)


def write_mapping(path: Path, key: bytes, ids: dict[str, tuple[set[str], set[str]]]) -> None:
    """The id -> pseudonym table of every indexed image and patient (CSV, mode 0600), for re-joining."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["dataset", "kind", "id", "pseudonym"])
        for ds, (image_ids, patient_ids) in sorted(ids.items()):
            for kind, values in (("image_id", image_ids), ("patient_id", patient_ids)):
                writer.writerows([ds, kind, v, pseudonym(key, v)] for v in sorted(values))
    tmp.replace(path)


def _parquet_text(path: Path) -> Iterator[tuple[str, str]]:
    """(where, text): column names, schema metadata and every distinct string/integer value per column."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    yield "column names", " ".join(table.column_names)
    for key, value in (table.schema.metadata or {}).items():
        yield "schema metadata", key.decode("utf-8", "replace") + " " + value.decode("utf-8", "replace")
    for name, col in zip(table.column_names, table.columns, strict=True):
        typ = col.type
        if pa.types.is_dictionary(typ):
            col = col.cast(typ.value_type)
            typ = typ.value_type
        if pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_integer(typ):
            uniq = pc.unique(col).to_pylist()
            yield f"column {name}", "\n".join(str(v) for v in uniq if v is not None)


def _pdf_text(data: bytes) -> Iterator[str]:
    """A PDF's raw bytes and its inflated (Flate) streams."""
    yield data.decode("latin-1")
    for match in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", data, re.DOTALL):
        try:
            yield zlib.decompress(match.group(1)).decode("latin-1")
        except zlib.error:
            continue


def scan_file(path: Path, index: IdentifierIndex) -> set[tuple[str, str]]:
    """(identifier, where) found in one file: Parquet by value (where = the column), PDF with inflated
    streams, others as bytes (where = "")."""
    if not len(index):
        return set()
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        chunks: Iterable[tuple[str, str]] = _parquet_text(path)
    else:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        if suffix == ".pdf":
            chunks = (("", text) for text in _pdf_text(data))
        else:
            # UTF-8 text as text; undecodable bytes also as Latin-1 so binary files are searched too.
            chunks = [("", data.decode("utf-8", "replace")), ("", data.decode("latin-1"))]
    hits: set[tuple[str, str]] = set()
    for where, chunk in chunks:
        hits |= {(value, where) for value in index.find(chunk)}
    return hits


def identifier_leaks(
    root: Path,
    scan: SourceScan,
    *,
    mode: str,
    extra: Iterable[str] = (),
) -> list[str]:
    """Every place under ``root`` (an archive's top folder) where an identifier occurs, one line each.

    Searched: the header values of ``scan`` and ``extra`` values (the demo's fake identifiers); with
    ``mode`` ``pseudonymise`` also the raw image/patient ids that contain a letter (all-digit ids
    would match counts and numbers, so only the id columns guard them).
    """
    fields = dict.fromkeys(extra, "demo manifest") | scan.values
    dates = [v for v, tag in scan.values.items() if tag in _DATE_TAGS]
    headers = IdentifierIndex.build([v for v in fields if v not in dates], dates=dates)
    raw = IdentifierIndex()
    if mode == "pseudonymise":
        for image_ids, patient_ids in scan.ids.values():
            for value in image_ids | patient_ids:
                if any(ch.isalpha() for ch in value):
                    raw.add(value)
    leaks: list[str] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        for value, where in sorted(scan_file(path, headers) | {(v, "") for v in headers.find(rel)}):
            source = fields.get(value, "demo manifest")
            source = source if source == "demo manifest" else f"DICOM {source}"
            at = f", {where}" if where else ""
            leaks.append(f"{rel}: contains the patient-identifying value {value!r} ({source}{at})")
        for value, where in sorted(scan_file(path, raw) | {(v, "") for v in raw.find(rel)}):
            at = f" in {where}" if where else ""
            leaks.append(
                f"{rel}: contains the raw image/patient id {value!r}{at}, outside the pseudonymised id columns "
                f"({', '.join(ID_COLUMNS)})"
            )
    return leaks


# --- metadata ------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_state(repo: Path = REPO_ROOT) -> dict[str, Any]:
    """Commit and dirty flag of the workflow's source checkout (read-only git calls)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "--no-optional-locks", "-C", str(repo), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError) as exc:
        return {"commit": None, "dirty": None, "error": f"not a git checkout or git unavailable: {exc}"}
    return {"commit": commit, "dirty": dirty}


def software_versions() -> dict[str, Any]:
    """Python, platform and the installed versions of cxrbench and every dependency it declares."""
    names = ["cxrbench", "snakemake", "snakemake-executor-plugin-slurm"]
    try:
        for req in importlib.metadata.requires("cxrbench") or []:
            if "extra ==" not in req:
                names.append(re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0])
    except importlib.metadata.PackageNotFoundError:
        pass
    packages: dict[str, str | None] = {}
    for name in dict.fromkeys(names):
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "packages": packages,
    }


def snakemake_report(snakefile: Path, config: dict[str, Any], out: Path, *, workdir: Path) -> None:
    """Render the Snakemake report of the finished run (self-contained HTML) for ``config``."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "config.yaml"
        cfg.write_text(yaml.safe_dump(config, sort_keys=False))
        cmd = [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            str(snakefile),
            "--directory",
            str(workdir),
            "--configfile",
            str(cfg),
            "--replace-workflow-config",
            "--nolock",
            "--report",
            str(out.resolve()),
        ]
        res = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if res.returncode != 0 or not out.is_file():
        raise ArchiveError(f"snakemake --report failed (exit {res.returncode}):\n{res.stderr[-3000:]}")


def _workflow_sources(snakefile: Path) -> list[tuple[Path, str]]:
    """The workflow definition shipped with the results (code, not data)."""
    base = snakefile.parent
    files = [(snakefile, "workflow/Snakefile")]
    for pattern in ("workflow/rules/*.smk", "workflow/schemas/*.yaml"):
        files += [(p, p.relative_to(base).as_posix()) for p in sorted(base.glob(pattern))]
    return files


def _mime(path: str) -> str:
    return {
        ".csv": "text/csv",
        ".md": "text/markdown",
        ".tex": "application/x-tex",
        ".json": "application/json",
        ".yaml": "application/yaml",
        ".parquet": "application/vnd.apache.parquet",
        ".npy": "application/x-npy",
        ".pdf": "application/pdf",
        ".svg": "image/svg+xml",
        ".html": "text/html",
        ".smk": "text/x-snakemake",
    }.get(Path(path).suffix.lower(), "application/octet-stream")


_CATEGORIES = (
    ("results/tables/", "tables", "Publication tables (CSV unrounded, Markdown, LaTeX)"),
    ("results/figures/", "figures", "Publication figures (PDF)"),
    ("results/stats/", "statistics", "Per-dataset metrics, shared bootstrap indices, resamples and paired tests"),
    ("results/runs/", "runs", "Per-run test/validation predictions, training history and run metadata"),
    ("results/pretrain/", "pretraining", "Supervised pre-training runs of pipeline initialisations"),
    ("results/", "summaries", "Label summaries and the results README"),
)


def write_crate(
    stage: Path,
    *,
    config: dict[str, Any],
    when: dt.datetime,
    times: tuple[float, float],
    quarantined: Iterable[tuple[str, str, str]] = (),
) -> None:
    """Write ``ro-crate-metadata.json`` (Workflow Run Crate 0.5) describing the staged files.

    ``quarantined``: (dataset, image id as published, reason) of each source whose header could not be
    checked; each becomes a ``PropertyValue`` in its dataset entity's ``additionalProperty``.
    """
    import snakemake
    from rocrate.model.contextentity import ContextEntity
    from rocrate.rocrate import ROCrate

    crate = ROCrate()
    crate.name = "cxrbench results"
    crate.description = (
        "Results of the cxrbench workflow (network initialisations for chest-radiograph ViTs): tables, figures, "
        "statistics and predictions. Source images and label files are credentialed and not included."
    )
    crate.datePublished = when.isoformat(timespec="seconds")
    wf = crate.add_workflow(
        stage / "workflow" / "Snakefile",
        dest_path="workflow/Snakefile",
        main=True,
        lang="snakemake",
        lang_version=snakemake.__version__,
    )
    wf.name = "cxrbench"
    profiles = []
    for pid, name in (
        ("https://w3id.org/ro/wfrun/process/0.5", "Process Run Crate"),
        ("https://w3id.org/ro/wfrun/workflow/0.5", "Workflow Run Crate"),
        ("https://w3id.org/workflowhub/workflow-ro-crate/1.0", "Workflow RO-Crate"),
    ):
        entity = crate.get(pid) or crate.add(
            ContextEntity(
                crate, pid, properties={"@type": "CreativeWork", "name": name, "version": pid.rsplit("/", 1)[-1]}
            )
        )
        profiles.append(entity)
    crate.root_dataset["conformsTo"] = profiles

    fp_config = crate.add_formal_parameter(
        "config", "File", identifier="#param-config", description="Resolved workflow configuration (defaults filled)"
    )
    fp_data = crate.add_formal_parameter(
        "datasets",
        "Dataset",
        identifier="#param-datasets",
        description="Credentialed chest-radiograph datasets (not redistributed)",
    )
    wf["input"] = [fp_config, fp_data]
    out_params = {
        key: crate.add_formal_parameter(key, "File", identifier=f"#param-{key}", description=desc)
        for _, key, desc in _CATEGORIES
    }
    wf["output"] = list(out_params.values())

    objects, results = [], []
    for path in sorted(p for p in stage.rglob("*") if p.is_file()):
        rel = path.relative_to(stage).as_posix()
        if rel in {CRATE_NAME, MANIFEST_NAME} or rel == "workflow/Snakefile":
            continue
        props: dict[str, Any] = {
            "encodingFormat": _mime(rel),
            "contentSize": path.stat().st_size,
            "sha256": sha256_file(path),
        }
        if rel == "metadata/config.resolved.yaml":
            props["exampleOfWork"] = {"@id": fp_config.id}
        else:
            key = next((k for prefix, k, _ in _CATEGORIES if rel.startswith(prefix)), None)
            if key:
                props["exampleOfWork"] = {"@id": out_params[key].id}
        entity = crate.get(rel) or crate.add_file(path, dest_path=rel, properties=props)
        if rel == "metadata/config.resolved.yaml":
            objects.append(entity)
        elif rel.startswith("results/"):
            results.append(entity)
    skipped: dict[str, list[ContextEntity]] = {}
    for k, (name, image_id, reason) in enumerate(quarantined):
        skipped.setdefault(name, []).append(
            crate.add(
                ContextEntity(
                    crate,
                    f"#quarantined-{k}",
                    properties={
                        "@type": "PropertyValue",
                        "name": "quarantined source (header not checked for identifiers)",
                        "propertyID": "image_id",
                        "value": image_id,
                        "description": reason,
                    },
                )
            )
        )
    for name, entry in sorted(config.get("datasets", {}).items()):
        dataset_props: dict[str, Any] = {
            "@type": "Dataset",
            "name": f"{name} ({entry.get('adapter')})",
            "description": "Source images and label files, read in place; credentialed, not redistributed.",
            "exampleOfWork": {"@id": fp_data.id},
        }
        if name in skipped:
            dataset_props["additionalProperty"] = [{"@id": e.id} for e in skipped[name]]
        objects.append(crate.add(ContextEntity(crate, f"#dataset-{name}", properties=dataset_props)))
    action = crate.add_action(
        wf,
        identifier="#run",
        object=objects,
        result=results,
        properties={
            "@type": "CreateAction",
            "name": "cxrbench workflow run",
            "startTime": dt.datetime.fromtimestamp(times[0], dt.UTC).isoformat(timespec="seconds"),
            "endTime": dt.datetime.fromtimestamp(times[1], dt.UTC).isoformat(timespec="seconds"),
            "actionStatus": {"@id": "http://schema.org/CompletedActionStatus"},
        },
    )
    crate.root_dataset["mentions"] = [action]
    crate.metadata.write(stage)


def write_manifest(stage: Path) -> Path:
    """``MANIFEST.sha256`` over every staged file (``sha256sum -c`` format, sorted)."""
    lines = []
    for path in sorted(p for p in stage.rglob("*") if p.is_file()):
        rel = path.relative_to(stage).as_posix()
        if rel != MANIFEST_NAME:
            lines.append(f"{sha256_file(path)}  {rel}")
    out = stage / MANIFEST_NAME
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def _tar(stage: Path, out: Path, *, top: str, mtime: int) -> None:
    """Deterministic tar.gz: sorted members, fixed owner and time, gzip without a time stamp."""

    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = mtime
        info.mode = 0o755 if info.isdir() else 0o644
        return info

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    with (
        open(tmp, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        tar.add(stage, arcname=top, recursive=False, filter=normalise)
        for path in sorted(stage.rglob("*")):
            tar.add(path, arcname=f"{top}/{path.relative_to(stage).as_posix()}", recursive=False, filter=normalise)
    tmp.replace(out)


# --- the whole thing ------------------------------------------------------------------------------


def _label_files(config: dict[str, Any]) -> list[Path]:
    from cxrbench.datasets import label_files

    files: list[Path] = []
    for name, entry in config.get("datasets", {}).items():
        try:
            files += [p for p in label_files(entry["adapter"], Path(entry["root"]), entry) if p.is_file()]
        except Exception as exc:  # a dataset whose label files cannot be listed cannot be guarded
            raise ArchiveError(f"cannot list the source label files of dataset {name!r}: {exc}") from exc
    return files


def archive_options(config: dict[str, Any]) -> dict[str, Any]:
    """The config's ``archive`` section with the schema's defaults for absent keys."""
    schema = load_schema()["properties"]["archive"]["properties"]
    options = {key: spec["default"] for key, spec in schema.items()}
    options.update(config.get("archive") or {})
    if options["identifiers"] not in IDENTIFIER_MODES:
        raise ArchiveError(
            f"config key 'archive.identifiers' must be one of {IDENTIFIER_MODES}, not {options['identifiers']!r}"
        )
    return options


def pseudonymise_stage(stage: Path, key: bytes) -> list[str]:
    """Pseudonymise the id columns of every staged Parquet/CSV result; the archive paths rewritten."""
    done = []
    for path in sorted(stage.glob("results/**/*")):
        if path.suffix.lower() in {".parquet", ".csv"} and pseudonymise_table(path, key):
            done.append(path.relative_to(stage).as_posix())
    return done


def build_archive(
    config: dict[str, Any],
    *,
    results: Path,
    out: Path,
    snakefile: Path = REPO_ROOT / "Snakefile",
    report: bool = True,
    workdir: Path | None = None,
    extra_identifiers: Iterable[str] = (),
) -> dict[str, Any]:
    """Stage, check and pack the archive; returns a summary (file count, identifiers checked, ...).

    With ``archive.identifiers: pseudonymise`` the id columns of every table are replaced by their
    HMAC-SHA256 under the key at ``archive.secret`` (created on first use), and the id -> pseudonym
    table is written next to the key. Sources whose header cannot be read are quarantined: logged and
    listed in the crate.

    Raises:
        ArchiveError: a forbidden file, an identifier found (file, value and DICOM attribute named), or
            a missing input of the checks.
    """
    results = Path(results)
    options = archive_options(config)
    datasets = config.get("datasets", {})
    files = collect_files(results, datasets=list(datasets))
    if not any(rel.startswith("results/") for _, rel in files):
        raise ArchiveError(f"no result files found under {results}")

    label_paths = _label_files(config)
    names = {p.name for p in label_paths}
    hashes = {sha256_file(p) for p in label_paths}
    problems = []
    for src, rel in files:
        why = forbidden_reason(src, rel, label_file_names=names, label_file_hashes=hashes)
        if why:
            problems.append(f"{src}: refused because {why}")
    if problems:
        raise ArchiveError("the archive would contain forbidden files:\n" + "\n".join(problems))

    scan = scan_sources(results, datasets)
    mode = options["identifiers"]
    key = load_secret(Path(options["secret"]), results=results) if mode == "pseudonymise" else None
    when = dt.datetime.fromtimestamp(int(os.environ.get("SOURCE_DATE_EPOCH", dt.datetime.now().timestamp())), dt.UTC)
    top = out.name.removesuffix(".tar.gz").removesuffix(".tgz")

    def published(image_id: str) -> str:
        return pseudonym(key, image_id) if key is not None else image_id

    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.is_dir() else None) as tmp:
        stage = Path(tmp) / top
        for src, rel in files:
            dest = stage / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
        if key is not None:
            rewritten = pseudonymise_stage(stage, key)
            _logger.info("pseudonymised the id columns of %d files: %s", len(rewritten), ", ".join(rewritten))
        meta = stage / "metadata"
        meta.mkdir(parents=True)
        (meta / "config.resolved.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        (meta / "software.json").write_text(json.dumps(software_versions(), indent=2, sort_keys=True) + "\n")
        (meta / "git.json").write_text(json.dumps(git_state(), indent=2, sort_keys=True) + "\n")
        for src, rel in _workflow_sources(Path(snakefile)):
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, stage / rel)
        if report:
            snakemake_report(Path(snakefile), config, stage / "report.html", workdir=Path(workdir or Path.cwd()))
        else:
            _logger.warning("--no-report: the archive has no Snakemake report")
        mtimes = [src.stat().st_mtime for src, _ in files]
        quarantined = [(q.dataset, published(q.image_id), q.reason) for q in scan.quarantined]
        write_crate(stage, config=config, when=when, times=(min(mtimes), max(mtimes)), quarantined=quarantined)

        leaks = identifier_leaks(stage, scan, mode=mode, extra=extra_identifiers)
        if leaks:
            hint = "" if key is not None else "\n(archive.identifiers: pseudonymise publishes keyed hashes of the ids)"
            raise ArchiveError(
                "identifiers found in the archive; nothing was written:\n" + "\n".join(leaks[:50]) + hint
            )
        if key is not None:  # before the tarball: no published archive without its re-join table
            mapping = Path(options["secret"]).with_name(f"{top}.pseudonyms.csv")
            write_mapping(mapping, key, scan.ids)
            _logger.info("id -> pseudonym table (never publish it): %s", mapping)
        write_manifest(stage)
        _tar(stage, out, top=top, mtime=int(when.timestamp()))
    n_files = len(files)
    _logger.info(
        "wrote %s: %d result files, ids %s, %d header values checked, %d sources quarantined",
        out,
        n_files,
        mode,
        len(scan.values),
        len(scan.quarantined),
    )
    return {
        "archive": str(out),
        "result_files": n_files,
        "identifiers": mode,
        "identifiers_checked": len(scan.values),
        "quarantined": [(q.dataset, q.image_id, q.reason) for q in scan.quarantined],
    }


# --- command line --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--settings", required=True, help="the resolved workflow config as JSON")
    parser.add_argument("--results", type=Path, required=True, help="the results folder")
    parser.add_argument("--out", type=Path, required=True, help="output .tar.gz")
    parser.add_argument(
        "--snakefile",
        type=Path,
        default=REPO_ROOT / "Snakefile",
        help="the workflow's Snakefile (its source is archived; it renders the report)",
    )
    parser.add_argument("--workdir", type=Path, help="the run's working directory (default: current)")
    parser.add_argument(
        "--no-report",
        action="store_true",
        help="leave out the Snakemake report (results without Snakemake run metadata)",
    )


def demo_identifiers(config: dict[str, Any], *, base: Path | None = None) -> list[str]:
    """The fake identifiers the demo generator lists in its manifest (checked in addition to the headers)."""
    demo = config.get("demo", {})
    if not demo.get("enabled"):
        return []
    manifest = Path(base or ".") / demo["root"] / "demo-manifest.json"
    if not manifest.is_file():
        raise ArchiveError(f"{manifest} is missing: the demo's identifier list cannot be checked")
    ids = json.loads(manifest.read_text()).get("identifiers")
    if not isinstance(ids, list):
        raise ArchiveError(f"{manifest}: key 'identifiers' must be a list of strings")
    return [str(v) for v in ids]


def run(args: argparse.Namespace) -> int:
    config = parse_settings(args.settings)
    try:
        build_archive(
            config,
            results=args.results,
            out=args.out,
            snakefile=args.snakefile,
            report=not args.no_report,
            workdir=args.workdir,
            extra_identifiers=demo_identifiers(config),
        )
    except ArchiveError as exc:
        _logger.error("%s", exc)
        return 1
    return 0
