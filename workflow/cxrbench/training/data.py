"""Training input: harmonised labels + preprocessed images (packed uint8 cache, else PNGs) -> tensors.

Reads the contracts of docs/contracts.md §2-3. Augmentation follows the study (paper-methods.md §3): grey
uint8 -> PIL -> horizontal flip (p) -> rotation uniform in [-r, r] degrees (nearest neighbour, black fill) ->
[0, 1] float replicated to 3 channels -> optional mean/std. Random draws come from a generator seeded by
(run seed, epoch, sample index), so the result does not depend on the number of loader workers, on the
order samples are fetched in, or on whether the run was resumed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode

_logger = logging.getLogger(__name__)

__all__ = [
    "CxrDataset",
    "DataError",
    "SplitData",
    "add_merged_columns",
    "augment",
    "load_split",
    "parent_of",
    "read_fractions",
    "read_labels_table",
    "read_manifest",
    "select_label_fraction",
    "shared_labels",
]

SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """An input file breaks its contract; the message names the file and what is wrong."""


# --- labels -----------------------------------------------------------------------------------------


def read_labels_table(path: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """``labels.parquet`` -> (frame, ordered label names without ``y_``).

    Uses ``cxrbench.labels.read_labels`` (schema-validated) when that module provides it; otherwise reads the
    Parquet and checks the few columns training relies on.
    """
    try:
        from cxrbench.labels import read_labels  # type: ignore[attr-defined]
    except ImportError:
        read_labels = None
    if read_labels is not None:
        df, labels = read_labels(path)
        return df, list(labels)
    return _read_labels_fallback(Path(path))


def _read_labels_fallback(path: Path) -> tuple[pd.DataFrame, list[str]]:
    import pyarrow.parquet as pq

    if not path.is_file():
        raise DataError(f"{path}: labels file does not exist")
    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    if b"cxrbench.labels" in meta:
        labels = list(json.loads(meta[b"cxrbench.labels"]))
    else:
        labels = [c[2:] for c in table.column_names if c.startswith("y_")]
    df = table.to_pandas()
    missing = [c for c in ("image_id", "patient_id", "split", *(f"y_{n}" for n in labels)) if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    if not labels:
        raise DataError(f"{path}: no label columns (y_<finding>)")
    bad = sorted(set(df["split"]) - set(SPLITS))
    if bad:
        raise DataError(f"{path}: column 'split' has value(s) {bad}; expected train/val/test")
    if df["image_id"].duplicated().any():
        raise DataError(f"{path}: image_id {df['image_id'][df['image_id'].duplicated()].iloc[0]!r} is not unique")
    return df, labels


def shared_labels(target: list[str], source: list[str]) -> list[str]:
    """Labels of ``target`` that ``source`` also has, in target order (the study's MIMIC-overlap label set).

    ``cxrbench.labels.overlap_labels`` when available (it also maps a laterality finding such as
    ``pleural_effusion_right`` to its merged parent when only the parent is shared); plain intersection otherwise.
    """
    try:
        from cxrbench.labels import overlap_labels
    except ImportError:
        have = set(source)
        return [name for name in target if name in have]
    return list(overlap_labels(target, source))


def parent_of() -> dict[str, str]:
    """Canonical finding -> merged parent finding (e.g. ``atelectasis_left`` -> ``atelectasis``); may be empty."""
    try:
        from cxrbench.labels.canonical import canonical_map
    except ImportError:
        return {}
    cmap = canonical_map()
    return {name: parent for name, parent in zip(cmap.index, cmap["parent"], strict=True) if parent}


def add_merged_columns(df: pd.DataFrame, labels: list[str], *, parents: dict[str, str]) -> pd.DataFrame:
    """Add ``y_<label>`` for each requested label the table lacks, merged from its child findings.

    A merged finding is positive when any child is positive, negative when every assessed child is negative,
    and NaN when no child is assessed (the study merged UKA's left/right labels this way).

    Raises:
        DataError: a label is neither a column nor the parent of any column.
    """
    out = df
    for label in labels:
        if f"y_{label}" in df.columns:
            continue
        children = [c for c in df.columns if c.startswith("y_") and parents.get(c[2:]) == label]
        if not children:
            raise DataError(f"labels table has no column y_{label} and no finding merges into {label!r}")
        values = df[children].to_numpy(dtype=np.float32)
        merged = np.where(np.isnan(values).all(axis=1), np.nan, np.nanmax(np.nan_to_num(values, nan=-1.0), axis=1))
        out = out.assign(**{f"y_{label}": merged.astype(np.float32)})
        _logger.info("y_%s merged from %s", label, ", ".join(children))
    return out


# --- label fractions --------------------------------------------------------------------------------


def read_fractions(path: str | Path) -> pd.Series:
    """``fractions.parquet`` (``image_id``, ``min_fraction``) -> min_fraction by image_id, checked.

    ``min_fraction`` is the smallest label fraction whose (nested) train subset contains the image.

    Raises:
        DataError: the file is missing, lacks a column, repeats an image or has a value outside (0, 1].
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: label-fraction file does not exist")
    df = pd.read_parquet(path)
    missing = [c for c in ("image_id", "min_fraction") if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    if df["image_id"].duplicated().any():
        raise DataError(f"{path}: image_id {df['image_id'][df['image_id'].duplicated()].iloc[0]!r} is not unique")
    values = df["min_fraction"].to_numpy(dtype=np.float64)
    bad = ~((values > 0) & (values <= 1))
    if bad.any():
        raise DataError(
            f"{path}: image {df['image_id'].iloc[int(np.argmax(bad))]!r} has min_fraction "
            f"{values[bad][0]}; expected a value in (0, 1]"
        )
    return pd.Series(values, index=df["image_id"].astype(str).to_numpy(), name="min_fraction")


def select_label_fraction(
    labels_df: pd.DataFrame, min_fraction: pd.Series, fraction: float, *, source_name: str = "fractions.parquet"
) -> pd.DataFrame:
    """Drop the train images outside the ``fraction`` subset (``min_fraction > fraction``); val/test untouched.

    Raises:
        DataError: a train image has no ``min_fraction`` (the file was built from other labels).
    """
    train = labels_df["split"] == "train"
    mins = labels_df.loc[train, "image_id"].astype(str).map(min_fraction)
    if mins.isna().any():
        raise DataError(
            f"{source_name}: {int(mins.isna().sum())} train image(s) have no min_fraction (first: "
            f"{labels_df.loc[mins.index[mins.isna()][0], 'image_id']!r}); rebuild it from this labels.parquet"
        )
    # The fractions are the config's own numbers written back as floats: compare with a rounding margin.
    drop = mins.index[mins.to_numpy(dtype=np.float64) > fraction + 1e-12]
    _logger.info("label fraction %g: %d of %d train images", fraction, int(train.sum()) - len(drop), int(train.sum()))
    return labels_df.drop(index=drop)


# --- images -----------------------------------------------------------------------------------------


def read_manifest(path: str | Path) -> pd.DataFrame:
    """The preprocessing manifest (image_id, output_path, status), checked; logs how many were rejected."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: preprocessing manifest does not exist")
    df = pd.read_parquet(path, columns=["image_id", "output_path", "status"])
    bad = sorted(set(df["status"]) - {"ok", "rejected"})
    if bad:
        raise DataError(f"{path}: column 'status' has value(s) {bad}; expected ok/rejected")
    no_png = (df["status"] == "ok") & df["output_path"].isna()
    if no_png.any():
        raise DataError(f"{path}: image {df['image_id'][no_png].iloc[0]!r} has status ok but no output_path")
    n_rejected = int((df["status"] == "rejected").sum())
    if n_rejected:
        _logger.warning("%s: %d rejected image(s) are dropped from training and evaluation", path, n_rejected)
    return df.reset_index(drop=True)


class ImageSource(Protocol):
    """uint8 grey images by position."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> np.ndarray: ...


class PngImages:
    """PNG files (8-bit grey) read on demand."""

    kind = "png"

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        with Image.open(self.paths[i]) as im:
            if im.mode != "L":
                raise DataError(f"{self.paths[i]}: expected an 8-bit grey PNG (mode L), got mode {im.mode}")
            return np.asarray(im)


class CachedImages:
    """Rows of a packed ``<split>.npy`` (N x S x S uint8), memory-mapped."""

    kind = "cache"

    def __init__(self, array: np.ndarray, rows: np.ndarray) -> None:
        self.array = array
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.array[self.rows[i]])


@dataclass
class SplitData:
    """One split, rows aligned: ids, targets (N x L float32, NaN = masked) and the images."""

    split: str
    image_ids: np.ndarray
    patient_ids: np.ndarray
    targets: np.ndarray
    images: ImageSource


def _cache_source(cache_dir: Path, split: str, image_ids: pd.Series) -> CachedImages | None:
    npy, index = cache_dir / f"{split}.npy", cache_dir / f"{split}.index.parquet"
    if not (npy.is_file() and index.is_file()):
        return None
    idx = pd.read_parquet(index, columns=["image_id", "row"]).set_index("image_id")["row"]
    missing = ~image_ids.isin(idx.index)
    if missing.any():
        raise DataError(
            f"{index}: {int(missing.sum())} image(s) of split {split!r} are not in the cache "
            f"(first: {image_ids[missing].iloc[0]!r}); rebuild the cache"
        )
    array = np.load(npy, mmap_mode="r")
    if array.dtype != np.uint8 or array.ndim != 3:
        raise DataError(f"{npy}: expected a uint8 N x S x S array, got {array.dtype} {array.shape}")
    rows = idx.loc[image_ids].to_numpy(dtype=np.int64)
    if len(rows) and (rows.max() >= len(array) or rows.min() < 0):
        raise DataError(f"{index}: row numbers outside 0..{len(array) - 1}")
    return CachedImages(array, rows)


def load_split(
    labels_df: pd.DataFrame,
    labels: list[str],
    split: str,
    *,
    manifest: pd.DataFrame,
    png_root: Path,
    cache_dir: Path | None = None,
    source_name: str = "labels.parquet",
) -> SplitData:
    """Select ``split`` of the labels, drop images the manifest rejected, attach the cache or the PNGs.

    Raises:
        DataError: an image of the labels is absent from the manifest, or the cache is incomplete.
    """
    part = labels_df[labels_df["split"] == split]
    status = part["image_id"].map(manifest.set_index("image_id")["status"])
    if status.isna().any():
        raise DataError(
            f"{source_name}: {int(status.isna().sum())} image(s) of split {split!r} are not in the preprocessing "
            f"manifest (first: {part['image_id'][status.isna()].iloc[0]!r}); rerun preprocessing"
        )
    rejected = status == "rejected"
    if rejected.any():
        _logger.warning("%s: split %s: %d rejected image(s) dropped", source_name, split, int(rejected.sum()))
    part = part[~rejected].sort_values("image_id", kind="stable").reset_index(drop=True)
    if part.empty:
        raise DataError(f"{source_name}: split {split!r} has no usable images")
    targets = part[[f"y_{n}" for n in labels]].to_numpy(dtype=np.float32, copy=True)
    bad = ~np.isnan(targets) & (targets != 0) & (targets != 1)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(
            f"{source_name}: image {part['image_id'][r]!r} label {labels[c]!r} is {targets[r, c]}; expected 1, 0 or NaN"
        )
    images: ImageSource | None = _cache_source(cache_dir, split, part["image_id"]) if cache_dir is not None else None
    if images is None:
        paths = manifest.set_index("image_id").loc[part["image_id"], "output_path"]
        images = PngImages([png_root / p for p in paths])
    _logger.info("split %s: %d images from %s", split, len(part), images.kind)
    return SplitData(
        split=split,
        image_ids=part["image_id"].astype(str).to_numpy(dtype=object),
        patient_ids=part["patient_id"].astype(str).to_numpy(dtype=object),
        targets=targets,
        images=images,
    )


# --- transforms -------------------------------------------------------------------------------------


def augment(
    image: np.ndarray,
    *,
    img_size: int,
    hflip: float = 0.0,
    rotation: float = 0.0,
    rng: np.random.Generator | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> torch.Tensor:
    """uint8 H x W grey -> float32 3 x S x S in [0, 1] (or mean/std-normalised).

    Flip and rotation are drawn from ``rng`` (no augmentation when ``rng`` is None, as for evaluation).
    """
    im = Image.fromarray(image)
    if im.size != (img_size, img_size):
        im = TF.resize(im, [img_size, img_size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    if rng is not None:
        flip, angle = rng.random() < hflip, rng.uniform(-rotation, rotation)
        if flip:
            im = TF.horizontal_flip(im)
        if rotation > 0:
            im = TF.rotate(im, float(angle), interpolation=InterpolationMode.NEAREST, fill=0)
    x = torch.from_numpy(np.array(im, dtype=np.uint8)).to(torch.float32).div_(255.0)
    x = x.unsqueeze(0).expand(3, -1, -1)
    if mean is not None and std is not None:
        x = TF.normalize(x, list(mean), list(std))
    return x.contiguous()


class CxrDataset(Dataset):
    """(image tensor, target vector with NaN, row) triples of one split."""

    def __init__(
        self,
        data: SplitData,
        *,
        img_size: int,
        train: bool,
        hflip: float = 0.5,
        rotation: float = 7.0,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        seed: int = 0,
    ) -> None:
        self.data = data
        self.img_size = img_size
        self.train = train
        self.hflip = hflip
        self.rotation = rotation
        self.mean = mean
        self.std = std
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Augmentation draws depend on the epoch (set before each epoch, also in resumed runs)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.data.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        rng = np.random.default_rng((self.seed, self.epoch, i)) if self.train else None
        x = augment(
            self.data.images[i],
            img_size=self.img_size,
            hflip=self.hflip,
            rotation=self.rotation,
            rng=rng,
            mean=self.mean,
            std=self.std,
        )
        return x, torch.from_numpy(self.data.targets[i]), i
