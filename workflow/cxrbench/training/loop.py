"""The fine-tuning loop: weighted masked BCE, AdamW, model selection on validation macro AUROC (or loss),
optional early stopping, resumable checkpoints.

Resume contract: ``checkpoint.pt`` is rewritten atomically after every epoch with the model, optimiser,
scheduler, gradient-scaler and RNG states, the history and the early-stopping state. A job killed at any
point restarts from the last completed epoch and ends with the same weights, history and predictions as an
uninterrupted run (shuffling is seeded per epoch and augmentation per sample, see ``data.py``).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from cxrbench.training.progress import Progress

_logger = logging.getLogger(__name__)

__all__ = [
    "BEST_STATE",
    "CHECKPOINT",
    "SELECTION_METRICS",
    "FitConfig",
    "FitResult",
    "fit",
    "lr_factor",
    "masked_bce",
    "per_label_auroc",
    "pos_weight",
    "predict",
    "predict_logits",
    "rankable_labels",
]

CHECKPOINT = "checkpoint.pt"
# Best weights while training; ``best.pt`` (a declared Snakemake output, deleted before a retry) is linked to
# it at the end, so a resumed job still has the best epoch's weights.
BEST_STATE = "checkpoint-best.pt"
# training.selection_metric -> whether higher is better
SELECTION_METRICS = {"val_auroc": True, "val_loss": False}


@dataclass(frozen=True)
class FitConfig:
    """Optimisation settings of one run (resolved from config.training).

    ``patience`` 0 trains all ``epochs`` (the study); ``selection_metric`` picks the best epoch:
    ``val_auroc`` (highest validation macro AUROC) or ``val_loss`` (lowest, the study's rule).
    """

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    patience: int = 10
    selection_metric: str = "val_auroc"
    schedule: str = "none"
    warmup_epochs: int = 0
    precision: str = "bf16"
    seed: int = 0


@dataclass
class FitResult:
    """What :func:`fit` ran: history rows, best epoch (1-based) and its validation macro AUROC and loss."""

    history: list[dict[str, Any]]
    best_epoch: int
    best_val_auroc: float
    best_val_loss: float
    stopped_early: bool
    resumed_from_epoch: int
    wall_s: float


# --- pure pieces ------------------------------------------------------------------------------------


def pos_weight(targets: np.ndarray) -> np.ndarray:
    """Per-label ``(N - P) / P`` over the non-masked entries of the training targets (NaN = masked).

    A label with no positive gets weight 1.0 and a warning (the ratio is undefined; its AUROC will be NaN).
    """
    known = ~np.isnan(targets)
    n = known.sum(axis=0).astype(np.float64)
    p = np.nansum(targets == 1, axis=0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = (n - p) / p
    none = p == 0
    if none.any():
        _logger.warning("label column(s) %s have no positive training example: pos_weight 1.0", np.flatnonzero(none))
        w[none] = 1.0
    return w.astype(np.float32)


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted BCE-with-logits averaged over the non-masked (non-NaN) entries.

    Without masked entries this equals ``BCEWithLogitsLoss(pos_weight=weight)`` (the study's loss).
    """
    mask = ~torch.isnan(targets)
    loss = nn.functional.binary_cross_entropy_with_logits(
        logits.float(), torch.nan_to_num(targets, nan=0.0), pos_weight=weight, reduction="none"
    )
    return (loss * mask).sum() / mask.sum().clamp(min=1)


def per_label_auroc(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUROC per label over non-masked entries; NaN where a label has a single class (undefined)."""
    out = np.full(targets.shape[1], np.nan)
    for j in range(targets.shape[1]):
        known = ~np.isnan(targets[:, j])
        y = targets[known, j]
        if len(np.unique(y)) == 2:
            out[j] = roc_auc_score(y, scores[known, j])
    return out


def lr_factor(epoch: int, *, schedule: str, epochs: int, warmup_epochs: int) -> float:
    """Learning-rate multiplier of 0-based ``epoch``: constant (the study) or linear warm-up then cosine."""
    if schedule == "none":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"unknown schedule {schedule!r}")
    if epoch < warmup_epochs:
        return (epoch + 1) / (warmup_epochs + 1)
    span = max(epochs - warmup_epochs, 1)
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / span))


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _loader(ds: Dataset, *, batch_size: int, num_workers: int, device: torch.device, **kw: Any) -> DataLoader:
    return DataLoader(
        ds,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        **kw,
    )


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    ds: Dataset,
    *,
    device: torch.device,
    batch_size: int,
    num_workers: int = 0,
    precision: str = "fp32",
) -> np.ndarray:
    """Logits (N x L float32) of a dataset in order, in eval mode, without augmentation."""
    model.eval()
    out = []
    for x, _, _ in _loader(ds, batch_size=batch_size, num_workers=num_workers, device=device, shuffle=False):
        with _autocast(device, precision):
            logits = model(x.to(device, non_blocking=True))
        out.append(logits.float().cpu())
    return torch.cat(out).numpy()


def predict(model: nn.Module, ds: Dataset, **kwargs: Any) -> np.ndarray:
    """Sigmoid probabilities (N x L float32); keyword options as :func:`predict_logits`."""
    return torch.sigmoid(torch.from_numpy(predict_logits(model, ds, **kwargs))).numpy()


def rankable_labels(targets: np.ndarray) -> np.ndarray:
    """Boolean per label: both classes present among the non-masked entries (AUROC defined)."""
    pos = np.nansum(targets == 1, axis=0) > 0
    neg = np.nansum(targets == 0, axis=0) > 0
    return pos & neg


# --- checkpoints ------------------------------------------------------------------------------------


def _atomic_save(obj: Any, path: Path) -> None:
    """torch.save via a temporary file and rename, so a kill mid-write never leaves a torn checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The saved state if ``path`` holds a checkpoint of the same run (same fingerprint), else None."""
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != fingerprint:
        _logger.warning("%s belongs to different settings or inputs: starting from scratch", path)
        return None
    return state


def write_history(rows: list[dict[str, Any]], path: Path) -> None:
    """history.csv: one row per epoch (columns of the first row, in order)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["epoch"])
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


# --- the loop ---------------------------------------------------------------------------------------


def _batches(loader: DataLoader, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for x, y, _ in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def fit(
    model: nn.Module,
    train_ds: Dataset,
    val_ds: Dataset,
    *,
    cfg: FitConfig,
    labels: list[str],
    out_dir: Path,
    device: torch.device,
    fingerprint: str,
    num_workers: int = 0,
    best_meta: dict[str, Any] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    progress: Progress | None = None,
    export: Callable[[nn.Module], dict[str, torch.Tensor]] | None = None,
) -> FitResult:
    """Train ``model`` in place on ``train_ds``, select on ``val_ds`` (``cfg.selection_metric``), checkpoint
    every epoch.

    Resumes from ``out_dir/checkpoint.pt`` when it has the same ``fingerprint``. Writes ``history.csv`` and
    ``checkpoint-best.pt`` (the best weights plus ``best_meta``) as it goes. ``on_step(epoch, step)`` is
    called before every optimiser step (fault-injection tests); ``progress`` reports epochs and steps
    (default: to the log only). Only parameters with ``requires_grad`` are optimised (LoRA freezes the
    backbone). ``export(model)`` gives the weights saved as the best state (default: ``model``'s own state
    dict): a linear probe trains the head alone but saves the whole network, LoRA saves merged weights.

    Raises:
        ValueError: no validation label has both classes, so checkpoints cannot be ranked; an unknown
            selection metric.
    """
    if cfg.selection_metric not in SELECTION_METRICS:
        raise ValueError(f"selection_metric must be one of {sorted(SELECTION_METRICS)}, got {cfg.selection_metric!r}")
    higher_is_better = SELECTION_METRICS[cfg.selection_metric]
    if progress is None:
        progress = Progress("train", epochs=cfg.epochs, patience=cfg.patience)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    train_targets = train_ds.data.targets
    val_targets = val_ds.data.targets
    if not rankable_labels(val_targets).any():
        raise ValueError(
            "validation split: no label has both a positive and a negative image; cannot select checkpoints"
        )
    weight = torch.from_numpy(pos_weight(train_targets)).to(device)
    model.to(device)
    # The fused CUDA kernel is one launch per step instead of one per tensor (same update rule).
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameter (requires_grad)")
    optimiser = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda e: lr_factor(e, schedule=cfg.schedule, epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs),
    )
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg.precision == "fp16")
    history: list[dict[str, Any]] = []
    best_score = -math.inf if higher_is_better else math.inf
    best_auroc, best_loss, best_epoch, bad_epochs, start, wall_before = math.nan, math.nan, 0, 0, 0, 0.0
    finished = False
    state = load_checkpoint(out_dir / CHECKPOINT, fingerprint)
    if state is not None:
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        history = list(state["history"])
        best_score, best_epoch, bad_epochs = state["best_score"], state["best_epoch"], state["bad_epochs"]
        best_auroc, best_loss = state["best_auroc"], state["best_loss"]
        start, finished, wall_before = state["epoch"], state["finished"], state["wall_s"]
        progress.emit(f"resuming after epoch {start} (best epoch {best_epoch}: {cfg.selection_metric} {best_score:.4f})")
    resumed_from = start
    drop_last = len(train_ds) > cfg.batch_size  # the study drops the last partial batch
    val_kw = {"device": device, "batch_size": cfg.batch_size, "num_workers": num_workers, "precision": cfg.precision}

    for epoch in range(start, cfg.epochs):
        if finished:
            break
        t0 = time.perf_counter()
        train_ds.set_epoch(epoch)
        generator = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        loader = _loader(
            train_ds,
            batch_size=cfg.batch_size,
            num_workers=num_workers,
            device=device,
            sampler=RandomSampler(train_ds, generator=generator),
            drop_last=drop_last,
        )
        model.train()
        losses, n_images = [], 0
        n_steps = len(loader)
        progress.start_epoch()
        for step, (x, y) in enumerate(_batches(loader, device)):
            if on_step is not None:
                on_step(epoch, step)
            with _autocast(device, cfg.precision):
                logits = model(x)
            loss = masked_bce(logits, y, weight)
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            losses.append(loss.item())
            n_images += len(x)
            progress.step(epoch, step + 1, n_steps, mean_loss=math.fsum(losses[-50:]) / min(len(losses), 50),
                          images=n_images)
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_s = time.perf_counter() - t0
        lr = optimiser.param_groups[0]["lr"]
        scheduler.step()

        val_logits = predict_logits(model, val_ds, **val_kw)
        val_loss = masked_bce(torch.from_numpy(val_logits), torch.from_numpy(val_targets), weight.cpu()).item()
        aurocs = per_label_auroc(val_targets, val_logits)  # AUROC is rank-based: logits rank as probabilities
        macro = float(np.nanmean(aurocs))
        score = macro if cfg.selection_metric == "val_auroc" else val_loss
        improved = score > best_score if higher_is_better else score < best_score
        if improved:
            best_score, best_auroc, best_loss, best_epoch, bad_epochs = score, macro, val_loss, epoch + 1, 0
            _atomic_save(
                {
                    **(best_meta or {}),
                    "model": export(model)
                    if export is not None
                    else {k: v.cpu() for k, v in model.state_dict().items()},
                    "epoch": epoch + 1,
                    "val_auroc": macro,
                    "val_loss": val_loss,
                    "selection_metric": cfg.selection_metric,
                    "labels": list(labels),
                },
                out_dir / BEST_STATE,
            )
        else:
            bad_epochs += 1
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(losses)),
            "val_loss": val_loss,
            "val_auroc_macro": macro,
            **{f"val_auroc_{name}": float(a) for name, a in zip(labels, aurocs, strict=True)},
            "lr": lr,
            "best": improved,
            "train_images": n_images,
            "train_img_per_s": n_images / train_s if train_s > 0 else float("nan"),
            "epoch_s": time.perf_counter() - t0,
        }
        history.append(row)
        stop = 0 < cfg.patience <= bad_epochs
        finished = stop or epoch + 1 == cfg.epochs
        _atomic_save(
            {
                "fingerprint": fingerprint,
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": optimiser.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": _rng_state(),
                "history": history,
                "best_score": best_score,
                "best_auroc": best_auroc,
                "best_loss": best_loss,
                "best_epoch": best_epoch,
                "bad_epochs": bad_epochs,
                "finished": finished,
                "wall_s": wall_before + time.perf_counter() - t_start,
            },
            out_dir / CHECKPOINT,
        )
        write_history(history, out_dir / "history.csv")
        progress.end_epoch(row, history, selection=cfg.selection_metric, best_epoch=best_epoch, bad_epochs=bad_epochs)
        _logger.debug("epoch %d: lr %.2e, %.0f img/s", epoch + 1, lr, row["train_img_per_s"])
        if stop:
            progress.emit(f"early stop: no better {cfg.selection_metric} for {bad_epochs} epochs")
            break
    write_history(history, out_dir / "history.csv")
    return FitResult(
        history=history,
        best_epoch=best_epoch,
        best_val_auroc=best_auroc,
        best_val_loss=best_loss,
        stopped_early=0 < cfg.patience <= bad_epochs,
        resumed_from_epoch=resumed_from,
        wall_s=wall_before + time.perf_counter() - t_start,
    )
