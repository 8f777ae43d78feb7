"""``cxrbench verify <dir>``: re-check an unpacked publication archive.

Checks that every file listed in ``MANIFEST.sha256`` exists with its SHA-256, that no file is
unlisted, that ``ro-crate-metadata.json`` parses and every file it describes is present, that no
image, DICOM or weight file slipped in (by name and by content), and that a pseudonymised archive's id
columns hold only pseudonyms. Where the run's sources are reachable (run it in the run's working
directory), it also repeats the DICOM header identifier scan of ``cxrbench archive``. Prints one line
per problem.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import re
from pathlib import Path
from typing import Any

import yaml

from cxrbench.archive import (
    CRATE_NAME,
    ID_COLUMNS,
    MANIFEST_NAME,
    ArchiveError,
    archive_options,
    demo_identifiers,
    forbidden_reason,
    identifier_leaks,
    scan_sources,
    sha256_file,
)
from cxrbench.paths import Layout

_logger = logging.getLogger(__name__)

__all__ = ["archive_root", "identifier_problems", "verify_archive"]

_LINE = re.compile(r"^([0-9a-f]{64})  (\S.*)$")
_PSEUDONYM = re.compile(r"[0-9a-f]{64}")
CONFIG_NAME = "metadata/config.resolved.yaml"


def archive_root(path: Path) -> Path:
    """The folder holding MANIFEST.sha256: ``path`` itself or its single sub-folder (the tarball's top)."""
    path = Path(path)
    if (path / MANIFEST_NAME).is_file():
        return path
    subs = [p for p in path.iterdir() if p.is_dir() and (p / MANIFEST_NAME).is_file()] if path.is_dir() else []
    if len(subs) == 1:
        return subs[0]
    raise FileNotFoundError(
        f"{path}: no {MANIFEST_NAME} here or in exactly one sub-folder (is it an unpacked archive?)"
    )


def verify_archive(path: Path, *, workdir: Path | None = None) -> list[str]:
    """Problems found in the unpacked archive at ``path`` ([] when it verifies).

    ``workdir``: the run's working directory, from which the config's dataset roots and results folder
    are resolved for the identifier scan (default: the current directory).
    """
    root = archive_root(path)
    problems: list[str] = []
    listed: dict[str, str] = {}
    for n, line in enumerate((root / MANIFEST_NAME).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        m = _LINE.match(line)
        if not m:
            problems.append(f"{MANIFEST_NAME} line {n}: not '<sha256>  <path>': {line[:80]!r}")
            continue
        digest, rel = m.groups()
        if rel.startswith("/") or ".." in Path(rel).parts:
            problems.append(f"{MANIFEST_NAME} line {n}: unsafe path {rel!r}")
            continue
        listed[rel] = digest
    for rel, digest in sorted(listed.items()):
        file = root / rel
        if not file.is_file():
            problems.append(f"{rel}: listed in {MANIFEST_NAME} but missing")
        elif sha256_file(file) != digest:
            problems.append(f"{rel}: SHA-256 differs from {MANIFEST_NAME} (modified or corrupted)")
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()}
    for rel in sorted(present - set(listed) - {MANIFEST_NAME}):
        problems.append(f"{rel}: present but not listed in {MANIFEST_NAME}")
    for rel in sorted(present & set(listed)):
        why = forbidden_reason(root / rel, rel, label_file_names=set(), label_file_hashes=set())
        if why:
            problems.append(f"{rel}: must not be in a publication archive: {why}")
    crate = root / CRATE_NAME
    if not crate.is_file():
        problems.append(f"{CRATE_NAME}: missing")
    else:
        try:
            graph = json.loads(crate.read_text(encoding="utf-8"))["@graph"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            problems.append(f"{CRATE_NAME}: not an RO-Crate JSON-LD document ({exc})")
        else:
            for entity in graph:
                types = entity.get("@type", [])
                types = [types] if isinstance(types, str) else types
                eid = entity.get("@id", "")
                if "File" in types and not eid.startswith(("#", "http")) and not (root / eid).is_file():
                    problems.append(f"{CRATE_NAME}: describes {eid!r}, which is missing")
    return problems + identifier_problems(root, workdir=workdir)


def _id_columns(path: Path) -> dict[str, list[str]]:
    """The values of the id columns (:data:`ID_COLUMNS`) of a Parquet or CSV file."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        cols = [c for c in ID_COLUMNS if c in pq.read_schema(path).names]
        table = pq.read_table(path, columns=cols).to_pydict() if cols else {}
        return {c: [str(v) for v in values if v is not None] for c, values in table.items()}
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    header = rows[0] if rows else []
    return {
        name: [row[i] for row in rows[1:] if i < len(row) and row[i] != ""]
        for i, name in enumerate(header)
        if name in ID_COLUMNS
    }


def identifier_problems(root: Path, *, workdir: Path | None = None) -> list[str]:
    """Identifiers in the archive at ``root``: raw ids in a pseudonymised archive's id columns, and (when
    the sources named in its config are reachable from ``workdir``) DICOM header identifiers anywhere."""
    cfg_file = root / CONFIG_NAME
    if not cfg_file.is_file():
        return [f"{CONFIG_NAME}: missing (the identifier checks need the run's config)"]
    config: dict[str, Any] = yaml.safe_load(cfg_file.read_text(encoding="utf-8")) or {}
    try:
        mode = archive_options(config)["identifiers"]
    except ArchiveError as exc:
        return [f"{CONFIG_NAME}: {exc}"]
    problems: list[str] = []
    if mode == "pseudonymise":
        for path in sorted(p for p in root.glob("results/**/*") if p.suffix.lower() in {".parquet", ".csv"}):
            for col, values in _id_columns(path).items():
                raw = next((v for v in values if not _PSEUDONYM.fullmatch(v)), None)
                if raw is not None:
                    rel = path.relative_to(root).as_posix()
                    problems.append(
                        f"{rel}: column {col} holds {raw!r}, not a pseudonym (archive.identifiers is pseudonymise)"
                    )
    base = Path(workdir or Path.cwd())
    results = base / str(config.get("results", "results"))
    datasets = config.get("datasets") or {}
    unreachable = [
        name
        for name, entry in sorted(datasets.items())
        if not (base / str(entry.get("root", ""))).is_dir() or not Layout(results).index(name).is_file()
    ]
    if unreachable:
        _logger.warning(
            "DICOM header identifier scan skipped: the sources or index of %s are not reachable from %s "
            "(run verify in the run's working directory, or give --workdir, to repeat it)",
            ", ".join(unreachable),
            base,
        )
        return problems
    try:
        scan = scan_sources(results, datasets, base=base)
        problems += identifier_leaks(root, scan, mode=mode, extra=demo_identifiers(config, base=base))
    except ArchiveError as exc:
        problems.append(f"identifier scan: {exc}")
    return problems


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, help="the unpacked archive (its top folder or the folder holding it)")
    parser.add_argument(
        "--workdir",
        type=Path,
        help="the run's working directory, to repeat the DICOM identifier scan on its sources (default: current)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        problems = verify_archive(args.path, workdir=args.workdir)
    except FileNotFoundError as exc:
        _logger.error("%s", exc)
        return 1
    for problem in problems:
        print(problem)
    if problems:
        _logger.error("%s: %d problem(s)", args.path, len(problems))
        return 1
    _logger.info("%s: every check that ran passed (checksums, listing, forbidden files, identifiers)", args.path)
    return 0
