"""Logging set-up shared by every command: one line per event, timestamps, to stderr."""

from __future__ import annotations

import logging
import sys

__all__ = ["QUIET_LIBRARIES", "setup_logging"]

# Libraries whose DEBUG/INFO output is noise for a pipeline user (numba alone writes thousands of compiler
# lines per shard at DEBUG). ``-v`` makes cxrbench verbose; these stay at WARNING.
QUIET_LIBRARIES = ("numba", "PIL", "matplotlib", "pydicom", "fsspec", "urllib3", "asyncio", "h5py", "filelock", "timm")


class _OneLineThirdParty(logging.Filter):
    """Drop the traceback of other libraries' records: pydicom logs one per failed decoder plugin at ERROR,
    while the rejection reason already names the failure in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("cxrbench") and record.exc_info:
            record.exc_info, record.exc_text = None, None
        return True


def setup_logging(verbose: bool = False) -> None:
    """Configure the root logger once; rules redirect stderr to their ``log:`` file."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(_OneLineThirdParty())
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
