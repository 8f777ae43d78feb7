"""``cxrbench features``: the frozen backbone's pooled features of one (initialisation, dataset, size).

A linear probe trains only the head, so the backbone's output of every image is computed once here and every
probe run of that (initialisation, dataset, size), whatever its seed or label fraction, trains on the cache: a
probe epoch costs a pass over an N x d matrix instead of a backbone forward pass.

The features are ``model.forward_head(model.forward_features(x), pre_logits=True)`` in eval mode, without
augmentation: exactly what the network's classifier sees when it predicts. The model, its weights and the
images come from the same code as ``cxrbench train`` (:func:`cxrbench.training.cli.prepare`).

Outputs in ``--out``: ``<split>.npy`` (float32, n x d) and ``<split>.index.parquet`` (``image_id`` in row order)
for train, val and test, and ``features.json`` (what computed them, including a SHA-256 of the backbone's
weights that a probe run checks against its own backbone).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from cxrbench.config import parse_settings
from cxrbench.training.cli import add_device_arguments
from cxrbench.training.data import DataError, SplitData

_logger = logging.getLogger(__name__)

__all__ = [
    "FEATURES_META",
    "FeatureDataset",
    "PooledFeatures",
    "add_arguments",
    "backbone_sha256",
    "check_meta",
    "extract",
    "feature_files",
    "read_meta",
    "read_split",
    "run",
]

FEATURES_META = "features.json"
SPLITS = ("train", "val", "test")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``cxrbench features``."""
    parser.add_argument("--settings", required=True, help="JSON of a run of this (init, dataset, size)")
    parser.add_argument("--labels", required=True, type=Path, help="the dataset's labels.parquet")
    parser.add_argument("--manifest", required=True, type=Path, help="png/<variant>/manifest.parquet")
    parser.add_argument("--cache-dir", type=Path, help="cache/<variant>/ folder; used when its files exist")
    parser.add_argument("--init-checkpoint", type=Path, help="pipeline initialisations: the pre-training best.pt")
    parser.add_argument("--out", required=True, type=Path, help="features folder")
    add_device_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Entry point of the subcommand."""
    extract(
        parse_settings(args.settings),
        labels_path=args.labels,
        manifest_path=args.manifest,
        cache_dir=args.cache_dir,
        init_checkpoint=args.init_checkpoint,
        out_dir=args.out,
        device=args.device,
        num_workers=args.num_workers,
        threads=args.threads,
    )
    return 0


class PooledFeatures(nn.Module):
    """A timm model up to its classifier: the pooled, normalised features the head sees (``pre_logits``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def backbone_sha256(model: nn.Module) -> str:
    """SHA-256 over the names and bytes of every parameter and buffer of ``model`` except its classifier."""
    head = {id(t) for t in model.get_classifier().state_dict(keep_vars=True).values()}
    digest = hashlib.sha256()
    for key, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in head:
            continue
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _input_meta(transform: dict[str, Any]) -> dict[str, Any]:
    """What of the input pipeline the features depend on (not the augmentation seed: there is none)."""
    return {
        "img_size": int(transform["img_size"]),
        "mean": list(transform["mean"]) if transform["mean"] is not None else None,
        "std": list(transform["std"]) if transform["std"] is not None else None,
    }


def extract(
    settings: dict[str, Any],
    *,
    labels_path: Path,
    manifest_path: Path,
    out_dir: Path,
    cache_dir: Path | None = None,
    init_checkpoint: Path | None = None,
    device: str = "auto",
    num_workers: int = 0,
    threads: int = 0,
) -> dict[str, Any]:
    """Compute and write the features of train, val and test; returns the ``features.json`` content.

    ``settings`` is the ``--settings`` object of any run of this (init, dataset, size): only the
    initialisation, ``img_size``, ``training.normalisation`` / ``precision`` / ``batch_size`` and, for a random
    backbone, ``seed`` (the model is built from it, as a run builds its model) matter. ``label_fraction`` is
    ignored: the features cover the whole train split, and each probe run selects its subset.
    """
    from cxrbench.training.cli import prepare, setup_runtime
    from cxrbench.training.loop import predict_logits

    t0 = time.perf_counter()
    dev = setup_runtime(settings, device=device, threads=threads)
    tr = settings["training"]
    seed = int(settings["seed"])
    prep = prepare(
        {**settings, "label_fraction": 1.0},
        labels_path=labels_path,
        manifest_path=manifest_path,
        cache_dir=cache_dir,
        init_checkpoint=init_checkpoint,
        target_labels_path=None,
        fractions_path=None,
        build_seed=seed,
    )
    precision = tr["precision"] if dev.type == "cuda" else "fp32"
    encoder = PooledFeatures(prep.model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dims = set()
    for split in SPLITS:
        ds = prep.dataset(split, train=False)
        feats = predict_logits(
            encoder, ds, device=dev, batch_size=int(tr["batch_size"]), num_workers=num_workers, precision=precision
        )
        dims.add(feats.shape[1])
        np.save(out_dir / f"{split}.npy", np.ascontiguousarray(feats, dtype=np.float32))
        pd.DataFrame({"image_id": pd.Series(prep.splits[split].image_ids, dtype="string")}).to_parquet(
            out_dir / f"{split}.index.parquet", index=False
        )
        _logger.info("features of %s: %d x %d", split, *feats.shape)
    meta = {
        "init": prep.spec.to_dict(),
        "dataset": settings["dataset"],
        "input": _input_meta(prep.transform),
        "seed": seed,
        "precision": precision,
        "device": dev.type,
        "backbone_sha256": backbone_sha256(prep.model),
        "weights_sha256": prep.weights_sha,
        "dim": int(dims.pop()),
        "images": {s: len(prep.splits[s].image_ids) for s in SPLITS},
        "wall_s": round(time.perf_counter() - t0, 3),
    }
    (out_dir / FEATURES_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def read_meta(features_dir: Path) -> dict[str, Any]:
    """``features.json`` of a features folder.

    Raises:
        DataError: the folder has no ``features.json`` (not written by ``cxrbench features``, or incomplete).
    """
    path = Path(features_dir) / FEATURES_META
    if not path.is_file():
        raise DataError(f"{path}: no features metadata; run `cxrbench features --out {features_dir}` first")
    return json.loads(path.read_text(encoding="utf-8"))


def check_meta(meta: dict[str, Any], model: nn.Module, transform: dict[str, Any], *, features_dir: Path) -> None:
    """Stop unless the features were computed by ``model``'s backbone from inputs transformed like ``transform``.

    Raises:
        DataError: naming what differs (backbone weights, image size or normalisation).
    """
    problems = []
    if meta["input"] != _input_meta(transform):
        problems.append(f"input {meta['input']} vs this run's {_input_meta(transform)}")
    if meta["backbone_sha256"] != backbone_sha256(model):
        problems.append("backbone weights differ (another initialisation, weight file, size or seed)")
    if problems:
        raise DataError(
            f"{features_dir}: the cached features were not computed for this run: {'; '.join(problems)}; "
            "recompute them with `cxrbench features` and this run's settings"
        )


def feature_files(features_dir: Path) -> list[Path]:
    """The files of a features folder (the fingerprint of a probe run hashes them)."""
    d = Path(features_dir)
    return [d / FEATURES_META] + [d / f"{s}{ext}" for s in SPLITS for ext in (".npy", ".index.parquet")]


def read_split(features_dir: Path, data: SplitData) -> np.ndarray:
    """The feature rows of ``data``'s images, in ``data``'s order (float32, n x d).

    Raises:
        DataError: a file is missing, or an image of the split has no feature row.
    """
    npy = Path(features_dir) / f"{data.split}.npy"
    index = Path(features_dir) / f"{data.split}.index.parquet"
    for path in (npy, index):
        if not path.is_file():
            raise DataError(f"{path}: missing; rerun `cxrbench features`")
    ids = pd.read_parquet(index, columns=["image_id"])["image_id"].astype(str)
    rows = pd.Series(np.arange(len(ids)), index=ids.to_numpy())
    wanted = pd.Index(data.image_ids.astype(str))
    missing = ~wanted.isin(rows.index)
    if missing.any():
        raise DataError(
            f"{index}: {int(missing.sum())} image(s) of split {data.split!r} have no features (first: "
            f"{wanted[missing][0]!r}); recompute them from this labels.parquet"
        )
    array = np.load(npy, mmap_mode="r")
    if array.dtype != np.float32 or array.ndim != 2 or len(array) != len(ids):
        raise DataError(f"{npy}: expected float32 {len(ids)} x d, got {array.dtype} {array.shape}")
    return np.ascontiguousarray(array[rows.loc[wanted].to_numpy(dtype=np.int64)])


class FeatureDataset(Dataset):
    """(feature vector, target vector with NaN, row) triples of one split: the probe's input, no augmentation."""

    def __init__(self, data: SplitData, features: np.ndarray) -> None:
        if len(features) != len(data.image_ids):
            raise ValueError(f"{len(features)} feature rows for {len(data.image_ids)} images of {data.split!r}")
        self.data = data
        self.features = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        self.targets = torch.from_numpy(data.targets)

    def set_epoch(self, epoch: int) -> None:
        """Nothing is drawn per epoch (the loop calls it for every dataset)."""

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.features[i], self.targets[i], i
