"""``cxrbench verify <dir>``: re-check an unpacked publication archive.

Checks that every file listed in ``MANIFEST.sha256`` exists with its SHA-256, that no file is
unlisted, that ``ro-crate-metadata.json`` parses and every file it describes is present, and that no
image, DICOM or weight file slipped in (by name and by content). Prints one line per problem.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path

from cxrbench.archive import CRATE_NAME, MANIFEST_NAME, forbidden_reason, sha256_file

_logger = logging.getLogger(__name__)

__all__ = ["archive_root", "verify_archive"]

_LINE = re.compile(r"^([0-9a-f]{64})  (\S.*)$")


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


def verify_archive(path: Path) -> list[str]:
    """Problems found in the unpacked archive at ``path`` ([] when it verifies)."""
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
    return problems


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, help="the unpacked archive (its top folder or the folder holding it)")


def run(args: argparse.Namespace) -> int:
    try:
        problems = verify_archive(args.path)
    except FileNotFoundError as exc:
        _logger.error("%s", exc)
        return 1
    for problem in problems:
        print(problem)
    if problems:
        _logger.error("%s: %d problem(s)", args.path, len(problems))
        return 1
    _logger.info("%s: every checksum matches, nothing unlisted, no forbidden file", args.path)
    return 0
