"""Logging set-up shared by every command: one line per event, timestamps, to stderr."""

from __future__ import annotations

import logging
import sys

__all__ = ["setup_logging"]


def setup_logging(verbose: bool = False) -> None:
    """Configure the root logger once; rules redirect stderr to their ``log:`` file."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
