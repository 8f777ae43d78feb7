"""Unpacking archives in tests on every Python 3.11 the project supports."""

from __future__ import annotations

import tarfile
from pathlib import Path


def extract_all(tar: tarfile.TarFile, dest: Path) -> None:
    """``tar.extractall(dest)`` with the "data" filter where Python has it (3.11.4 and later; Debian 12 ships
    3.11.2, whose ``extractall`` takes no ``filter``); the archives here are the tests' own."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
    else:
        tar.extractall(dest)
