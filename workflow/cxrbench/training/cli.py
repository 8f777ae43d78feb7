"""``cxrbench train``: fine-tune (or pre-train) one (initialisation, dataset) run.

Inputs (docs/contracts.md §2-3): the dataset's ``labels.parquet``, its preprocessing manifest, optionally the
packed cache folder, and for a ``pipeline`` initialisation the pre-training run's ``best.pt``. Outputs in
``--out`` (§4): ``checkpoint.pt`` (resume state), ``best.pt``, ``history.csv``, ``predictions.parquet`` and
``run.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.config import ConfigError, parse_settings

_logger = logging.getLogger(__name__)

__all__ = ["add_arguments", "predictions_frame", "run", "train"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``cxrbench train``."""
    parser.add_argument("--settings", required=True, help="JSON built by the rule (training.settings.run_settings)")
    parser.add_argument("--labels", required=True, type=Path, help="the dataset's labels.parquet")
    parser.add_argument("--manifest", required=True, type=Path, help="png/<variant>/manifest.parquet")
    parser.add_argument("--cache-dir", type=Path, help="cache/<variant>/ folder; used when its files exist")
    parser.add_argument("--init-checkpoint", type=Path, help="pipeline initialisations: the pre-training best.pt")
    parser.add_argument("--target-labels", type=Path, help="study-mode pre-training: the target's labels.parquet")
    parser.add_argument("--out", required=True, type=Path, help="run folder")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--num-workers", type=int, default=0, help="data-loading worker processes")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")
    parser.add_argument("--grad-checkpointing", action="store_true",
                        help="recompute activations in the backward pass (less memory, same numbers)")


def run(args: argparse.Namespace) -> int:
    """Entry point of the subcommand."""
    settings = parse_settings(args.settings)
    train(
        settings,
        labels_path=args.labels,
        manifest_path=args.manifest,
        cache_dir=args.cache_dir,
        init_checkpoint=args.init_checkpoint,
        target_labels_path=args.target_labels,
        out_dir=args.out,
        device=args.device,
        num_workers=args.num_workers,
        threads=args.threads,
        grad_checkpointing=args.grad_checkpointing,
    )
    return 0


def _sha256(path: Path) -> str:
    from cxrbench.models.factory import sha256_file

    return sha256_file(path)


def predictions_frame(
    split: str,
    image_ids: np.ndarray,
    patient_ids: np.ndarray,
    labels: list[str],
    targets: np.ndarray,
    scores: np.ndarray,
) -> pd.DataFrame:
    """Long-format predictions of one split (contract §4): one row per (image, label), image-major."""
    n, k = targets.shape
    return pd.DataFrame(
        {
            "split": pd.Series([split] * (n * k), dtype="string"),
            "image_id": pd.Series(np.repeat(image_ids, k), dtype="string"),
            "patient_id": pd.Series(np.repeat(patient_ids, k), dtype="string"),
            "label": pd.Series(np.tile(np.asarray(labels, dtype=object), n), dtype="string"),
            "target": targets.reshape(-1).astype(np.float32),
            "score": scores.reshape(-1).astype(np.float32),
        }
    )


def _write_predictions(frames: list[pd.DataFrame], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("split", pa.string()),
            ("image_id", pa.string()),
            ("patient_id", pa.string()),
            ("label", pa.string()),
            ("target", pa.float32()),
            ("score", pa.float32()),
        ]
    )
    table = pa.Table.from_pandas(pd.concat(frames, ignore_index=True), schema=schema, preserve_index=False)
    pq.write_table(table, path)


def _versions() -> dict[str, Any]:
    import sklearn
    import timm
    import torch
    import torchvision

    import cxrbench

    return {
        "python": platform.python_version(),
        "cxrbench": cxrbench.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "scikit-learn": sklearn.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }


def _resolve_device(name: str) -> Any:
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no GPU (CUDA build? CUDA_VISIBLE_DEVICES?)")
    return torch.device(name)


def _select_labels(
    settings: dict[str, Any], own: list[str], *, target_labels: list[str] | None, init_labels: list[str] | None
) -> list[str]:
    """The run's label list: all of the dataset's, or (``study``/``shared_head`` transfer) those it shares with
    the other side (the target's labels for a per-target pre-training, the pre-trained head's for a fine-tune)."""
    from cxrbench.training.data import shared_labels

    if settings["label_scope"] == "all":
        return own
    transfer = settings["init"].get("transfer") or "study"
    if settings["role"] == "pretrain":
        if target_labels is None:
            raise ConfigError("study-mode pre-training needs --target-labels (the target dataset's labels.parquet)")
        labels = shared_labels(target_labels, own)
        where = f"target {settings['target']!r}"
    else:
        if init_labels is None:
            raise ConfigError(f"{transfer} transfer needs --init-checkpoint (the pre-training best.pt)")
        labels = shared_labels(own, init_labels)
        if transfer == "study" and labels != list(init_labels):
            raise ConfigError(
                f"study transfer: the pre-trained head predicts {init_labels}, but {settings['dataset']!r} shares "
                f"{labels} with it; pre-train for this target (for-{settings['dataset']})"
            )
        where = "the pre-trained checkpoint"
    if not labels:
        raise ConfigError(f"dataset {settings['dataset']!r} shares no label with {where}")
    return labels


def train(
    settings: dict[str, Any],
    *,
    labels_path: Path,
    manifest_path: Path,
    out_dir: Path,
    cache_dir: Path | None = None,
    init_checkpoint: Path | None = None,
    target_labels_path: Path | None = None,
    device: str = "auto",
    num_workers: int = 0,
    threads: int = 0,
    grad_checkpointing: bool = False,
    on_step: Any = None,
) -> dict[str, Any]:
    """Run one training job end to end and write its outputs; returns the run.json content."""
    t0 = time.perf_counter()
    tr = settings["training"]
    # Both are read when CUDA / huggingface_hub initialise, so they are set before torch touches the GPU.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    from cxrbench.models import hub

    hub.enable_offline(Path(settings["hf_home"]))

    import torch

    from cxrbench.models.factory import build_model, data_config, select_head_rows, weights_file
    from cxrbench.models.registry import InitSpec
    from cxrbench.training.data import (
        CxrDataset,
        add_merged_columns,
        load_split,
        parent_of,
        read_labels_table,
        read_manifest,
    )
    from cxrbench.training.loop import BEST_STATE, FitConfig, fit, predict
    from cxrbench.training.progress import Progress, format_duration, open_terminal

    if threads > 0:
        torch.set_num_threads(threads)
    dev = _resolve_device(device)
    torch.backends.cudnn.benchmark = False
    # warn_only: GPU attention backward kernels have no deterministic variant; they warn instead of failing,
    # so CPU runs are bitwise reproducible and GPU runs as far as CUDA allows (docs/training.md).
    torch.use_deterministic_algorithms(bool(tr.get("deterministic", True)), warn_only=True)
    spec = InitSpec.from_dict(settings["init"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    labels_df, own_labels = read_labels_table(labels_path)
    target_labels = read_labels_table(target_labels_path)[1] if target_labels_path else None
    pipeline_state, init_labels = None, None
    if spec.source == "pipeline":
        if init_checkpoint is None:
            raise ConfigError(f"initialisation {spec.name!r} (pipeline) needs --init-checkpoint")
        ckpt = torch.load(init_checkpoint, map_location="cpu", weights_only=True)
        pipeline_state, init_labels = ckpt["model"], list(ckpt["labels"])
    labels = _select_labels(settings, own_labels, target_labels=target_labels, init_labels=init_labels)
    labels_df = add_merged_columns(labels_df, labels, parents=parent_of())
    keep_head = spec.source == "pipeline" and spec.transfer in ("study", "shared_head")
    if keep_head and labels != init_labels:
        # shared_head: the pre-trained head covers every label of the pre-training dataset; keep its rows of
        # the labels this target shares, in the target's order (study transfer: the lists are identical).
        pipeline_state = select_head_rows(
            pipeline_state, model=spec.model, rows=[init_labels.index(name) for name in labels]
        )

    manifest = read_manifest(manifest_path)
    png_root = Path(manifest_path).parent
    cache = Path(cache_dir) if cache_dir is not None else None
    splits = {
        s: load_split(
            labels_df, labels, s, manifest=manifest, png_root=png_root, cache_dir=cache, source_name=str(labels_path)
        )
        for s in ("train", "val", "test")
    }

    weights_path = init_checkpoint if spec.source == "pipeline" else weights_file(spec, hf_home=settings["hf_home"])
    weights_sha = _sha256(Path(weights_path)) if weights_path is not None else None
    inputs = [labels_path, manifest_path, target_labels_path] + (
        [cache / f"{s}.index.parquet" for s in splits] if cache is not None else []
    )
    fingerprint = hashlib.sha256(
        json.dumps(
            {
                "settings": settings,
                "weights": weights_sha,
                "inputs": {str(p): _sha256(Path(p)) for p in inputs if p is not None and Path(p).is_file()},
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()

    seed = int(settings["seed"])
    torch.manual_seed(seed)  # the new head (and a random backbone) start from the run's seed
    img_size = int(settings["img_size"])
    model = build_model(
        spec,
        num_classes=len(labels),
        img_size=img_size,
        hf_home=settings["hf_home"],
        pipeline_state=pipeline_state,
        keep_head=keep_head,
    )
    if grad_checkpointing:  # training.grad_checkpointing: a runtime key, so it is a flag, not a setting
        model.set_grad_checkpointing(True)
    mean = std = None
    if tr["normalisation"] == "model":
        dc = data_config(model)
        mean, std = tuple(dc["mean"]), tuple(dc["std"])
    aug = {"img_size": img_size, "mean": mean, "std": std, "seed": seed}
    train_ds = CxrDataset(splits["train"], train=True, hflip=tr["hflip"], rotation=tr["rotation"], **aug)
    val_ds = CxrDataset(splits["val"], train=False, **aug)
    test_ds = CxrDataset(splits["test"], train=False, **aug)
    precision = tr["precision"] if dev.type == "cuda" else "fp32"
    if precision != tr["precision"]:
        _logger.info("precision %s applies on GPU only: running fp32 on %s", tr["precision"], dev)
    cfg = FitConfig(
        epochs=tr["epochs"],
        batch_size=tr["batch_size"],
        lr=tr["lr"],
        weight_decay=tr["weight_decay"],
        patience=tr["patience"],
        selection_metric=tr["selection_metric"],
        schedule=tr["schedule"],
        warmup_epochs=tr["warmup_epochs"],
        precision=precision,
        seed=seed,
    )
    best_meta = {
        "model_name": spec.model,
        "img_size": img_size,
        "pooling": spec.pooling,
        "arm": settings["arm"],
        "role": settings["role"],
        "dataset": settings["dataset"],
    }
    run_name = f"{settings['arm']}/{settings['dataset']}"
    if settings["role"] == "pretrain":
        run_name = f"pretrain {run_name} for {settings['target'] or 'all labels'}"
    progress = Progress(run_name, epochs=cfg.epochs, patience=cfg.patience, terminal=open_terminal())
    progress.emit(
        f"{len(splits['train'].image_ids)} train / {len(splits['val'].image_ids)} val images, {len(labels)} labels, "
        f"up to {cfg.epochs} epochs on {dev.type} ({precision}), selecting on {cfg.selection_metric}"
        + (f", early stop after {cfg.patience} epochs without improvement" if cfg.patience else "")
    )
    t_fit = time.perf_counter()
    try:
        result = fit(
            model,
            train_ds,
            val_ds,
            cfg=cfg,
            labels=labels,
            out_dir=out_dir,
            device=dev,
            fingerprint=fingerprint,
            num_workers=num_workers,
            best_meta={k: v for k, v in best_meta.items() if v is not None},
            on_step=on_step,
            progress=progress,
        )
    except BaseException:
        progress.close()
        raise
    fit_s = time.perf_counter() - t_fit

    best_state = out_dir / BEST_STATE
    best = torch.load(best_state, map_location="cpu", weights_only=True)
    model.load_state_dict(best["model"])
    pred_kw = {"device": dev, "batch_size": cfg.batch_size, "num_workers": num_workers, "precision": precision}
    frames = [
        predictions_frame(
            s, splits[s].image_ids, splits[s].patient_ids, labels, splits[s].targets, predict(model, ds, **pred_kw)
        )
        for s, ds in (("val", val_ds), ("test", test_ds))
    ]
    _write_predictions(frames, out_dir / "predictions.parquet")
    best_pt = out_dir / "best.pt"
    best_pt.unlink(missing_ok=True)
    try:  # a hard link: no second copy of the weights, and the working copy survives a rerun
        os.link(best_state, best_pt)
    except OSError:
        import shutil

        shutil.copyfile(best_state, best_pt)

    meta = {
        "settings": settings,
        "role": settings["role"],
        "arm": settings["arm"],
        "dataset": settings["dataset"],
        "initialisation": spec.to_dict(),
        "transfer": spec.transfer if spec.source == "pipeline" else None,
        "labels": labels,
        "weights": {"path": str(weights_path) if weights_path else None, "sha256": weights_sha},
        "seed": seed,
        "device": {
            "type": dev.type,
            "name": torch.cuda.get_device_name(dev)
            if dev.type == "cuda"
            else platform.processor() or platform.machine(),
            "precision": precision,
            "deterministic": bool(tr.get("deterministic", True)),
            "threads": torch.get_num_threads(),
            "num_workers": num_workers,
        },
        "images": {s: len(d.image_ids) for s, d in splits.items()},
        "image_source": splits["train"].images.kind,
        "best_epoch": result.best_epoch,
        "selection_metric": cfg.selection_metric,
        "best_val_auroc_macro": result.best_val_auroc,
        "best_val_loss": result.best_val_loss,
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "resumed_from_epoch": result.resumed_from_epoch,
        # Training time of every attempt (from the checkpoint) plus this process's set-up and prediction.
        "wall_s": round(result.wall_s + (time.perf_counter() - t0) - fit_s, 3),
        "versions": _versions(),
        "command": sys.argv,
    }
    (out_dir / "run.json").write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")
    progress.emit(
        f"done: best epoch {result.best_epoch} of {len(result.history)} (by {cfg.selection_metric}), val macro AUROC "
        f"{result.best_val_auroc:.4f}, val loss {result.best_val_loss:.4f}, {format_duration(meta['wall_s'])}"
    )
    progress.close()
    return meta
