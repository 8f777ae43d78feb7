"""``cxrbench train``: fine-tune (or pre-train) one (initialisation, dataset) run.

Inputs (docs/contracts.md §2-3): the dataset's ``labels.parquet``, its preprocessing manifest, optionally the
packed cache folder, and for a ``pipeline`` initialisation the pre-training run's ``best.pt``. Outputs in
``--out`` (§4): ``checkpoint.pt`` (resume state), ``best.pt``, ``history.csv``, ``predictions.parquet`` and
``run.json``.

Regimes (``settings["regime"]``, docs/training.md "Regimes"): ``finetune`` trains the whole network;
``linear_probe`` trains only the head on the frozen backbone's features cached by ``cxrbench features``
(``--features-dir``); ``lora`` trains peft low-rank adapters on the attention projections plus the head. All
three write the same files; ``best.pt`` always holds a plain timm state dict of the whole network.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.config import ConfigError, parse_settings

_logger = logging.getLogger(__name__)

__all__ = [
    "Prepared",
    "add_arguments",
    "add_device_arguments",
    "input_transform",
    "predictions_frame",
    "prepare",
    "resolve_device",
    "run",
    "run_precision",
    "setup_runtime",
    "train",
    "write_predictions",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``cxrbench train``."""
    parser.add_argument("--settings", required=True, help="JSON built by the rule (training.settings.run_settings)")
    parser.add_argument("--labels", required=True, type=Path, help="the dataset's labels.parquet")
    parser.add_argument("--manifest", required=True, type=Path, help="png/<variant>/manifest.parquet")
    parser.add_argument("--cache-dir", type=Path, help="cache/<variant>/ folder; used when its files exist")
    parser.add_argument("--init-checkpoint", type=Path, help="pipeline initialisations: the pre-training best.pt")
    parser.add_argument("--target-labels", type=Path, help="study-mode pre-training: the target's labels.parquet")
    parser.add_argument(
        "--fractions", type=Path, help="label fractions: parquet (image_id, min_fraction); needed when label_fraction < 1"
    )
    parser.add_argument("--features-dir", type=Path, help="linear_probe: the folder `cxrbench features` wrote")
    parser.add_argument("--out", required=True, type=Path, help="run folder")
    add_device_arguments(parser)
    parser.add_argument("--grad-checkpointing", action="store_true",
                        help="recompute activations in the backward pass (less memory, same numbers)")


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """The runtime-only options every model job takes (train, features, external-predict): they change no result."""
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--num-workers", type=int, default=0, help="data-loading worker processes")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")


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
        fractions_path=args.fractions,
        features_dir=args.features_dir,
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


def write_predictions(frames: list[pd.DataFrame], path: Path) -> None:
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


def resolve_device(name: str) -> Any:
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no GPU (CUDA build? CUDA_VISIBLE_DEVICES?)")
    return torch.device(name)


def input_transform(model: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """Image size, normalisation and seed of a run's input tensors (``CxrDataset`` options).

    ``prepare`` feeds the run's model with these, and so must anything that predicts with the run's weights
    later (``cxrbench external-predict``).
    """
    from cxrbench.models.factory import data_config

    mean = std = None
    if settings["training"]["normalisation"] == "model":
        dc = data_config(model)
        mean, std = tuple(dc["mean"]), tuple(dc["std"])
    return {"img_size": int(settings["img_size"]), "mean": mean, "std": std, "seed": int(settings["seed"])}


def run_precision(training: dict[str, Any], device: Any) -> str:
    """The configured precision on a GPU; fp32 elsewhere (autocast to bf16/fp16 is a GPU feature here)."""
    return training["precision"] if device.type == "cuda" else "fp32"


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


def setup_runtime(settings: dict[str, Any], *, device: str, threads: int) -> Any:
    """Process-wide set-up of a training or feature job (offline hub, threads, determinism); returns the device."""
    # Both are read when CUDA / huggingface_hub initialise, so they are set before torch touches the GPU.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    from cxrbench.models import hub

    hub.enable_offline(Path(settings["hf_home"]))

    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    torch.backends.cudnn.benchmark = False
    # warn_only: GPU attention backward kernels have no deterministic variant; they warn instead of failing,
    # so CPU runs are bitwise reproducible and GPU runs as far as CUDA allows (docs/training.md).
    torch.use_deterministic_algorithms(bool(settings["training"].get("deterministic", True)), warn_only=True)
    return dev


@dataclass
class Prepared:
    """A run's labels, splits and model with its initial weights (shared by ``train`` and ``features``)."""

    spec: Any  # InitSpec
    labels: list[str]
    splits: dict[str, Any]  # split -> SplitData
    model: Any  # the timm model
    keep_head: bool  # the head comes from the pre-trained checkpoint (study or shared_head transfer)
    weights_path: Path | None
    weights_sha: str | None
    transform: dict[str, Any]  # img_size, mean, std, seed of CxrDataset
    training: dict[str, Any]  # settings["training"]

    def dataset(self, split: str, *, train: bool) -> Any:
        """The images of ``split`` as a CxrDataset, augmented (training settings) when ``train``."""
        from cxrbench.training.data import CxrDataset

        if not train:
            return CxrDataset(self.splits[split], train=False, **self.transform)
        tr = self.training
        return CxrDataset(self.splits[split], train=True, hflip=tr["hflip"], rotation=tr["rotation"], **self.transform)


def prepare(
    settings: dict[str, Any],
    *,
    labels_path: Path,
    manifest_path: Path,
    cache_dir: Path | None,
    init_checkpoint: Path | None,
    target_labels_path: Path | None,
    fractions_path: Path | None,
    build_seed: int,
) -> Prepared:
    """Read the labels and splits (train reduced to ``settings["label_fraction"]``) and build the model.

    The model is built right after ``torch.manual_seed(build_seed)``, so its random parts (the new head, a
    random backbone) are those of that seed.

    Raises:
        ConfigError: ``label_fraction`` < 1 without ``fractions_path``, or a missing pre-trained checkpoint.
    """
    import torch

    from cxrbench.models.factory import build_model, select_head_rows, weights_file
    from cxrbench.models.registry import InitSpec
    from cxrbench.training.data import (
        add_merged_columns,
        load_split,
        parent_of,
        read_fractions,
        read_labels_table,
        read_manifest,
        select_label_fraction,
    )

    tr = settings["training"]
    spec = InitSpec.from_dict(settings["init"])
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

    fraction = float(settings.get("label_fraction", 1.0))
    if fractions_path is not None:
        labels_df = select_label_fraction(
            labels_df, read_fractions(fractions_path), fraction, source_name=str(fractions_path)
        )
    elif fraction < 1.0:
        raise ConfigError(
            f"label_fraction {fraction:g} needs --fractions (the dataset's fractions.parquet from `cxrbench fractions`)"
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

    torch.manual_seed(build_seed)  # the new head (and a random backbone) start from this seed
    img_size = int(settings["img_size"])
    model = build_model(
        spec,
        num_classes=len(labels),
        img_size=img_size,
        hf_home=settings["hf_home"],
        pipeline_state=pipeline_state,
        keep_head=keep_head,
    )
    return Prepared(
        spec=spec,
        labels=labels,
        splits=splits,
        model=model,
        keep_head=keep_head,
        weights_path=Path(weights_path) if weights_path is not None else None,
        weights_sha=weights_sha,
        transform=input_transform(model, settings),
        training=tr,
    )


def train(
    settings: dict[str, Any],
    *,
    labels_path: Path,
    manifest_path: Path,
    out_dir: Path,
    cache_dir: Path | None = None,
    init_checkpoint: Path | None = None,
    target_labels_path: Path | None = None,
    fractions_path: Path | None = None,
    features_dir: Path | None = None,
    device: str = "auto",
    num_workers: int = 0,
    threads: int = 0,
    grad_checkpointing: bool = False,
    on_step: Any = None,
) -> dict[str, Any]:
    """Run one training job end to end and write its outputs; returns the run.json content.

    Raises:
        ConfigError: an unknown regime, a linear probe without ``features_dir`` or with augmentation, LoRA
            without ``training.lora``, a label fraction below 1 without ``fractions_path``.
        DataError: the cached features do not belong to this run's backbone and inputs.
    """
    t0 = time.perf_counter()
    tr = settings["training"]
    regime = settings.get("regime", "finetune")
    dev = setup_runtime(settings, device=device, threads=threads)

    import torch

    from cxrbench.models.factory import add_lora, merged_lora_state, trainable_parameters
    from cxrbench.training import features as feat
    from cxrbench.training.loop import BEST_STATE, FitConfig, fit, predict
    from cxrbench.training.progress import Progress, format_duration, open_terminal

    if regime not in ("finetune", "linear_probe", "lora"):
        raise ConfigError(f"settings 'regime': unknown regime {regime!r} (finetune, linear_probe, lora)")
    seed = int(settings["seed"])
    features_meta = None
    if regime == "linear_probe":
        if features_dir is None:
            raise ConfigError("regime linear_probe needs --features-dir (the output folder of `cxrbench features`)")
        if tr["hflip"] or tr["rotation"]:
            raise ConfigError(
                "regime linear_probe trains on features computed once, without augmentation: training.hflip and "
                "training.rotation must be 0 (training.settings.regime_training sets them)"
            )
        features_meta = feat.read_meta(Path(features_dir))
    elif regime == "lora" and not tr.get("lora"):
        raise ConfigError("regime lora needs settings 'training.lora' (rank, alpha, dropout, target_modules)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    # A probe's backbone is the one its features were computed from: built from the features job's seed (which
    # matters for a random backbone only); its new head is then drawn from the run's seed.
    prep = prepare(
        settings,
        labels_path=labels_path,
        manifest_path=manifest_path,
        cache_dir=cache_dir,
        init_checkpoint=init_checkpoint,
        target_labels_path=target_labels_path,
        fractions_path=fractions_path,
        build_seed=int(features_meta["seed"]) if features_meta is not None else seed,
    )
    spec, labels, splits, model = prep.spec, prep.labels, prep.splits, prep.model
    if grad_checkpointing:  # training.grad_checkpointing: a runtime key, so it is a flag, not a setting
        model.set_grad_checkpointing(True)
    if regime == "linear_probe":
        feat.check_meta(features_meta, model, prep.transform, features_dir=Path(features_dir))
        if not prep.keep_head:
            torch.manual_seed(seed)
            model.reset_classifier(len(labels))

    cache = Path(cache_dir) if cache_dir is not None else None
    inputs = [labels_path, manifest_path, target_labels_path, fractions_path] + (
        [cache / f"{s}.index.parquet" for s in splits] if cache is not None else []
    )
    if features_dir is not None and regime == "linear_probe":
        inputs += feat.feature_files(Path(features_dir))
    fingerprint = hashlib.sha256(
        json.dumps(
            {
                "settings": settings,
                "weights": prep.weights_sha,
                "inputs": {str(p): _sha256(Path(p)) for p in inputs if p is not None and Path(p).is_file()},
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()

    export = None
    if regime == "linear_probe":
        data = {s: feat.FeatureDataset(splits[s], feat.read_split(Path(features_dir), splits[s])) for s in splits}
        train_ds, val_ds, test_ds = data["train"], data["val"], data["test"]
        trainable = model.get_classifier()

        def export(_head: Any) -> dict[str, Any]:  # the whole network: frozen backbone + the trained head
            return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    else:
        train_ds, val_ds, test_ds = (prep.dataset(s, train=s == "train") for s in ("train", "val", "test"))
        trainable = model
        if regime == "lora":
            trainable = add_lora(model, **tr["lora"])
            export = merged_lora_state
    n_trainable = trainable_parameters(trainable)
    precision = run_precision(tr, dev)
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
        "img_size": prep.transform["img_size"],
        "pooling": spec.pooling,
        "arm": settings["arm"],
        "role": settings["role"],
        "dataset": settings["dataset"],
        "regime": regime,
    }
    run_name = f"{settings['arm']}/{settings['dataset']}"
    if settings["role"] == "pretrain":
        run_name = f"pretrain {run_name} for {settings['target'] or 'all labels'}"
    progress = Progress(run_name, epochs=cfg.epochs, patience=cfg.patience, terminal=open_terminal())
    progress.emit(
        f"{len(splits['train'].image_ids)} train / {len(splits['val'].image_ids)} val images, {len(labels)} labels, "
        f"up to {cfg.epochs} epochs on {dev.type} ({precision}), selecting on {cfg.selection_metric}"
        + (f", early stop after {cfg.patience} epochs without improvement" if cfg.patience else "")
        + (f"; {regime}, {n_trainable:,} trainable parameters" if regime != "finetune" else "")
    )
    t_fit = time.perf_counter()
    try:
        result = fit(
            trainable,
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
            export=export,
        )
    except BaseException:
        progress.close()
        raise
    fit_s = time.perf_counter() - t_fit

    best_state = out_dir / BEST_STATE
    best = torch.load(best_state, map_location="cpu", weights_only=True)
    if regime == "lora":
        model = trainable.merge_and_unload()  # back to the plain timm model the merged best state fits
    model.load_state_dict(best["model"])
    # A probe predicts from the cached features with its head (the whole network computes the same, see tests).
    predictor = model.get_classifier() if regime == "linear_probe" else model
    pred_kw = {"device": dev, "batch_size": cfg.batch_size, "num_workers": num_workers, "precision": precision}
    frames = [
        predictions_frame(
            s, splits[s].image_ids, splits[s].patient_ids, labels, splits[s].targets, predict(predictor, ds, **pred_kw)
        )
        for s, ds in (("val", val_ds), ("test", test_ds))
    ]
    write_predictions(frames, out_dir / "predictions.parquet")
    best_pt = out_dir / "best.pt"
    best_pt.unlink(missing_ok=True)
    try:  # a hard link: no second copy of the weights, and the working copy survives a rerun
        os.link(best_state, best_pt)
    except OSError:
        import shutil

        shutil.copyfile(best_state, best_pt)

    train_targets = splits["train"].targets
    meta = {
        "settings": settings,
        "role": settings["role"],
        "arm": settings["arm"],
        "dataset": settings["dataset"],
        "regime": regime,
        "label_fraction": float(settings.get("label_fraction", 1.0)),
        "replicate": int(settings.get("replicate", 0)),
        "trainable_parameters": n_trainable,
        "initialisation": spec.to_dict(),
        "transfer": spec.transfer if spec.source == "pipeline" else None,
        "labels": labels,
        "weights": {"path": str(prep.weights_path) if prep.weights_path else None, "sha256": prep.weights_sha},
        "features": (
            {"dir": str(features_dir), "backbone_sha256": features_meta["backbone_sha256"]}
            if features_meta is not None
            else None
        ),
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
        "train_positives": {
            name: int(np.nansum(train_targets[:, j] == 1)) for j, name in enumerate(labels)
        },
        "image_source": "features" if regime == "linear_probe" else splits["train"].images.kind,
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
