"""Convert one shard of source images to PNGs with a pool of worker processes; build its manifest."""

from __future__ import annotations

import logging
import multiprocessing as mp
import re
import time
import urllib.parse
from collections import Counter
from pathlib import Path

import pandas as pd

from cxrbench.imaging.decode import UnusableImage
from cxrbench.imaging.pipeline import Recipe, convert
from cxrbench.imaging.write import write_png

_logger = logging.getLogger(__name__)

__all__ = ["MANIFEST_COLUMNS", "one_line_reason", "output_name", "process_one", "process_shard", "status_summary"]

MANIFEST_COLUMNS = [
    "image_id",
    "source_path",
    "output_path",
    "source_format",
    "transfer_syntax",
    "photometric",
    "bits_stored",
    "rows",
    "cols",
    "status",
    "reason",
    "window",
    "reduction",
]


def output_name(image_id: str) -> str:
    """File name of an image's PNG: the id, percent-encoded so ids with '/' or spaces stay one file."""
    return urllib.parse.quote(image_id, safe="-_.") + ".png"


# An absolute path inside a decoder's message (a module, a temporary file): only its last part is kept.
_ABS_PATH = re.compile(r"(?<![\w.~])/(?:[^\s/:'\"(),]+/)+([^\s/:'\"(),]+)")
_REASON_MAX = 400


def one_line_reason(reason: str, src: str, source_path: str) -> str:
    """A rejection reason as one line without absolute machine paths (the source as its dataset-relative path)."""
    text = " ".join(reason.replace(src, source_path).split())
    text = _ABS_PATH.sub(r"\1", text)
    return text if len(text) <= _REASON_MAX else text[: _REASON_MAX - 3] + "..."


def process_one(task: tuple[str, str, str, str, str, Recipe]) -> dict:
    """Convert one image; an unusable image becomes a ``rejected`` row with a one-line reason."""
    image_id, source_path, src, out_dir, rel_dir, recipe = task
    row = {"image_id": image_id, "source_path": source_path, "output_path": None, "status": "rejected"}
    extra = {"window": None, "reduction": None}
    try:
        img, info, extra = convert(src, recipe)
    except UnusableImage as exc:
        info, row["reason"] = exc.info, one_line_reason(exc.reason, src, source_path)
    else:
        # Write errors (full disk, permissions) are not the image's fault: they fail the shard.
        name = output_name(image_id)
        write_png(Path(out_dir) / name, img)
        row.update(status="ok", output_path=f"{rel_dir}/{name}", reason=None)
    row.update(
        source_format=info.source_format,
        transfer_syntax=info.transfer_syntax,
        photometric=info.photometric,
        bits_stored=info.bits_stored,
        rows=info.rows,
        cols=info.cols,
        **extra,
    )
    return row


def _init_worker() -> None:
    # One BLAS/numba thread per process: parallelism comes from the pool, oversubscription only slows it.
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        pass


def process_shard(
    members: pd.DataFrame,
    *,
    root: Path,
    out_dir: Path,
    recipe: Recipe,
    workers: int = 1,
    progress_every: int = 200,
) -> pd.DataFrame:
    """Convert every member image into ``out_dir`` and return the shard manifest (one row per member)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = [
        (iid, sp, str(root / sp), str(out_dir), out_dir.name, recipe)
        for iid, sp in zip(members["image_id"], members["source_path"])
    ]
    rows: list[dict] = []
    start = time.perf_counter()
    n = len(tasks)

    def _progress(done: int) -> None:
        if done == n or done % progress_every == 0:
            rate = done / max(time.perf_counter() - start, 1e-9)
            _logger.info("%s: %d/%d images (%.1f img/s)", out_dir.name, done, n, rate)

    if workers <= 1 or n <= 1:
        for task in tasks:
            rows.append(process_one(task))
            _progress(len(rows))
    else:
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        with ctx.Pool(min(workers, n), initializer=_init_worker) as pool:
            for row in pool.imap(process_one, tasks, chunksize=4):
                rows.append(row)
                _progress(len(rows))
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    for col in ("bits_stored", "rows", "cols", "reduction"):
        manifest[col] = manifest[col].astype("Int64")
    return manifest


def status_summary(manifest: pd.DataFrame) -> str:
    """One line per status and per rejection reason code, for logs."""
    lines = [f"{status}: {count}" for status, count in sorted(Counter(manifest["status"]).items())]
    reasons = Counter(str(r).split(":", 1)[0] for r in manifest.loc[manifest["status"] == "rejected", "reason"])
    lines += [f"  rejected/{code}: {count}" for code, count in sorted(reasons.items())]
    return "\n".join(lines)
