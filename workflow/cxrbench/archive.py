"""``cxrbench archive``: one publication tarball of a finished run, safe to share.

The tarball (``<name>/`` inside) holds the evaluation tables, figures (PDF), statistics (metrics,
bootstrap indices, resamples, tests), every run's predictions, history and run.json, the results
README, the resolved config, software versions and the git commit, the Snakemake report, the workflow
source, a SHA-256 manifest of every file and an RO-Crate (Workflow Run Crate profile).

It never holds images, PNGs, DICOMs, JPEGs, source label files, the harmonised label tables or
anything under a dataset's ``png/`` or ``cache/`` folder: files are picked from an allow-list of the
results layout (:class:`cxrbench.paths.Layout`), and every picked file is checked again by name,
location and content (magic bytes, label-file checksums). Then every file, including the report and
the metadata written here, is scanned for the patient-identifying values found in the DICOM headers of
the configured datasets (names, IDs, birth dates, accession numbers ...); one hit fails the archive.
``cxrbench verify`` re-checks an unpacked archive.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import re
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

from cxrbench.config import REPO_ROOT, parse_settings
from cxrbench.paths import Layout

_logger = logging.getLogger(__name__)

__all__ = [
    "CRATE_NAME",
    "MANIFEST_NAME",
    "PHI_TAGS",
    "ArchiveError",
    "IdentifierIndex",
    "build_archive",
    "collect_files",
    "dicom_identifiers",
    "forbidden_reason",
    "scan_file",
    "sha256_file",
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
)
_DATE_TAGS = {"PatientBirthDate"}
_DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}
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
    ``stats/<ds>/``, the label summaries, the results README and each run's predictions, history and
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
        for path in sorted(layout.stats_dir(ds).glob("*")):
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


def dicom_identifiers(paths: Iterable[Path]) -> tuple[set[str], set[str]]:
    """(identifying values, birth dates) from the headers of the given DICOM files (pixels not read)."""
    import pydicom

    values: set[str] = set()
    dates: set[str] = set()
    n = 0
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(PHI_TAGS))
        except Exception as exc:  # an unreadable header cannot be checked: say so, do not skip silently
            raise ArchiveError(f"cannot read the DICOM header of {path}: {exc}") from exc
        n += 1
        for tag in PHI_TAGS:
            if tag not in ds or ds[tag].value in (None, ""):
                continue
            elem = ds[tag]
            items = elem.value if elem.VM > 1 else [elem.value]
            for item in items:
                text = str(item).strip()
                if text:
                    (dates if tag in _DATE_TAGS else values).add(text)
                    if "^" in text:  # person names: also the family^given parts joined by a space
                        values.add(" ".join(p for p in text.split("^") if p))
    _logger.info("read %d DICOM headers: %d identifying values, %d birth dates", n, len(values), len(dates))
    return values, dates


def dataset_dicoms(results: Path, datasets: dict[str, dict[str, Any]]) -> list[Path]:
    """The source DICOM files of every configured dataset, from its index.parquet ``source_path``."""
    import pyarrow.parquet as pq

    layout = Layout(results)
    found: list[Path] = []
    for name, entry in datasets.items():
        index = layout.index(name)
        if not index.is_file():
            raise ArchiveError(f"{index} is missing: cannot list dataset {name!r}'s source DICOMs for the PHI check")
        root = Path(entry["root"])
        for rel in pq.read_table(index, columns=["source_path"]).column("source_path").to_pylist():
            if rel and Path(rel).suffix.lower() in _DICOM_SUFFIXES:
                path = root / rel
                if path.is_file():
                    found.append(path)
    return found


def _parquet_text(path: Path) -> Iterator[str]:
    """Column names, schema metadata and every distinct string/integer value of a Parquet file."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    yield " ".join(table.column_names)
    for key, value in (table.schema.metadata or {}).items():
        yield key.decode("utf-8", "replace") + " " + value.decode("utf-8", "replace")
    for col in table.columns:
        typ = col.type
        if pa.types.is_dictionary(typ):
            col = col.cast(typ.value_type)
            typ = typ.value_type
        if pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_integer(typ):
            uniq = pc.unique(col).to_pylist()
            yield "\n".join(str(v) for v in uniq if v is not None)


def _pdf_text(data: bytes) -> Iterator[str]:
    """A PDF's raw bytes and its inflated (Flate) streams."""
    yield data.decode("latin-1")
    for match in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", data, re.DOTALL):
        try:
            yield zlib.decompress(match.group(1)).decode("latin-1")
        except zlib.error:
            continue


def scan_file(path: Path, index: IdentifierIndex) -> set[str]:
    """Identifiers found in one file: Parquet by value, PDF with inflated streams, others as bytes."""
    if not len(index):
        return set()
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        chunks: Iterable[str] = _parquet_text(path)
    else:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        if suffix == ".pdf":
            chunks = _pdf_text(data)
        else:
            # UTF-8 text as text; undecodable bytes also as Latin-1 so binary files are searched too.
            chunks = [data.decode("utf-8", "replace"), data.decode("latin-1")]
    hits: set[str] = set()
    for chunk in chunks:
        hits |= index.find(chunk)
    return hits


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


def write_crate(stage: Path, *, config: dict[str, Any], when: dt.datetime, times: tuple[float, float]) -> None:
    """Write ``ro-crate-metadata.json`` (Workflow Run Crate 0.5) describing the staged files."""
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
    for name, entry in sorted(config.get("datasets", {}).items()):
        objects.append(
            crate.add(
                ContextEntity(
                    crate,
                    f"#dataset-{name}",
                    properties={
                        "@type": "Dataset",
                        "name": f"{name} ({entry.get('adapter')})",
                        "description": "Source images and label files, read in place; credentialed, not redistributed.",
                        "exampleOfWork": {"@id": fp_data.id},
                    },
                )
            )
        )
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
    """Stage, check and pack the archive; returns a summary (file count, identifiers checked).

    Raises:
        ArchiveError: a forbidden file, a patient-identifying value found (file and value named), or
            a missing input of the checks.
    """
    results = Path(results)
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

    values, dates = dicom_identifiers(dataset_dicoms(results, datasets))
    values |= set(extra_identifiers)
    index = IdentifierIndex.build(values, dates=dates)
    when = dt.datetime.fromtimestamp(int(os.environ.get("SOURCE_DATE_EPOCH", dt.datetime.now().timestamp())), dt.UTC)
    top = out.name.removesuffix(".tar.gz").removesuffix(".tgz")

    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.is_dir() else None) as tmp:
        stage = Path(tmp) / top
        for src, rel in files:
            dest = stage / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
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
        write_crate(stage, config=config, when=when, times=(min(mtimes), max(mtimes)))

        leaks = []
        for path in sorted(p for p in stage.rglob("*") if p.is_file()):
            rel = path.relative_to(stage).as_posix()
            for value in sorted(scan_file(path, index) | index.find(rel)):
                leaks.append(f"{rel}: contains the patient-identifying value {value!r}")
        if leaks:
            raise ArchiveError(
                "patient-identifying values from the DICOM headers found; nothing was written:\n"
                + "\n".join(leaks[:50])
            )
        write_manifest(stage)
        _tar(stage, out, top=top, mtime=int(when.timestamp()))
    n_files = len(files)
    _logger.info("wrote %s: %d result files, %d identifiers checked", out, n_files, len(index))
    return {"archive": str(out), "result_files": n_files, "identifiers_checked": len(index)}


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


def _demo_identifiers(config: dict[str, Any]) -> list[str]:
    """The fake identifiers the demo generator lists in its manifest (checked in addition to the headers)."""
    demo = config.get("demo", {})
    if not demo.get("enabled"):
        return []
    manifest = Path(demo["root"]) / "demo-manifest.json"
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
            extra_identifiers=_demo_identifiers(config),
        )
    except ArchiveError as exc:
        _logger.error("%s", exc)
        return 1
    return 0
