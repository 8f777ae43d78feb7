"""Benchmark: time per epoch of the training regimes on the same data and model, and the cost of the size axis.

Each regime runs the real loop (``cxrbench.training.loop.fit``) on the same synthetic images, labels and timm
model (random weights, offline): ``finetune`` (whole network, flip + rotation), ``lora`` (peft adapters r = 16 on
the attention projections plus the head) and ``linear_probe`` (the head on cached features, no augmentation).
The per-epoch time is the median ``epoch_s`` of ``history`` (train + validation, without the checkpoint write)
after the first epoch. The probe's one-off feature extraction (train + val through ``PooledFeatures``, the code of
``cxrbench features``) is timed separately, with the number of probe epochs after which it has paid off.
Issue 12 expects the probe >= 20x faster per epoch than fine-tuning. Then fine-tuning and feature extraction at
each of ``--sizes`` (the grid's size axis), as ratios to the smallest size.

    python bench/regimes.py                                    # CPU: vit_tiny at 64 px, sizes 32 64
    python bench/regimes.py --model vit_base_patch16_224 --size 224 --sizes 224 512 --n 2048 --device cuda
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
from cxrbench.models.factory import add_lora, trainable_parameters
from cxrbench.training.data import CachedImages, CxrDataset, SplitData
from cxrbench.training.features import FeatureDataset, PooledFeatures
from cxrbench.training.loop import FitConfig, fit, predict_logits

LABELS = [f"finding_{i}" for i in range(8)]


def _data(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Grey uint8 images with a bright spot per positive finding, and their 0/1 targets."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, len(LABELS))) < 0.3).astype(np.float32)
    y[:2] = [[1] * len(LABELS), [0] * len(LABELS)]  # both classes of every label in any split of >= 2 images
    yy, xx = np.mgrid[:size, :size] / size
    spots = [np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.004) for cy, cx in rng.uniform(0.15, 0.85, (len(LABELS), 2))]
    images = np.empty((n, size, size), np.uint8)
    for lo in range(0, n, 128):  # in chunks: a float copy of thousands of 512-px images would not fit in memory
        chunk = rng.normal(80, 25, (min(128, n - lo), size, size)).astype(np.float32)
        for j, spot in enumerate(spots):
            chunk += 100 * y[lo : lo + len(chunk), j, None, None] * spot[None].astype(np.float32)
        images[lo : lo + len(chunk)] = np.clip(chunk, 0, 255)
    return images, y


def _splits(images: np.ndarray, y: np.ndarray, n_val: int) -> dict[str, SplitData]:
    ids = np.array([f"img{i:06d}" for i in range(len(images))], dtype=object)
    rows = {"val": np.arange(n_val), "train": np.arange(n_val, len(images))}
    return {s: SplitData(s, ids[r], ids[r], y[r], CachedImages(images, r)) for s, r in rows.items()}


def _model(name: str, size: int, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(1)
    kwargs = {"img_size": size} if "vit" in name else {}
    return timm.create_model(name, pretrained=False, num_classes=len(LABELS), **kwargs).to(device)


def _fit(model: torch.nn.Module, train_ds, val_ds, *, args, lr: float, device: torch.device) -> dict:
    """Per-epoch seconds (median after the first) and training img/s of ``args.epochs`` epochs of fit()."""
    precision = "bf16" if device.type == "cuda" else "fp32"
    cfg = FitConfig(epochs=args.epochs, batch_size=args.batch_size, lr=lr, patience=0, precision=precision, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        res = fit(model, train_ds, val_ds, cfg=cfg, labels=LABELS, out_dir=Path(tmp), device=device,
                  fingerprint="bench", num_workers=args.num_workers)
    steady = res.history[1:] or res.history
    return {
        "epoch_s": statistics.median(r["epoch_s"] for r in steady),
        "img_s": statistics.median(r["train_img_per_s"] for r in steady),
        "trainable": trainable_parameters(model),
    }


def _extract(model: torch.nn.Module, splits: dict[str, SplitData], size: int, *, args, device) -> tuple:
    """Features of train and val (the features CLI's path) and the seconds it took."""
    precision = "bf16" if device.type == "cuda" else "fp32"
    t0 = time.perf_counter()
    feats = {
        s: predict_logits(PooledFeatures(model), CxrDataset(d, img_size=size, train=False), device=device,
                          batch_size=args.batch_size, num_workers=args.num_workers, precision=precision)
        for s, d in splits.items()
    }
    if device.type == "cuda":
        torch.cuda.synchronize()
    return feats, time.perf_counter() - t0


def _finetune(name: str, size: int, splits: dict[str, SplitData], *, args, device, lora: bool = False) -> dict:
    model = _model(name, size, device)
    if lora:
        model = add_lora(model, rank=16, alpha=16, dropout=0.05, target_modules=["qkv", "proj"])
    train_ds = CxrDataset(splits["train"], img_size=size, train=True, hflip=0.5, rotation=7, seed=1)
    val_ds = CxrDataset(splits["val"], img_size=size, train=False)
    return _fit(model, train_ds, val_ds, args=args, lr=1e-4 if lora else 1e-5, device=device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_tiny_patch16_224", help="timm architecture (random weights)")
    parser.add_argument("--size", type=int, default=64, help="image size of the regime comparison")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64], help="sizes of the size-axis comparison")
    parser.add_argument("--n", type=int, default=320, help="images (the first quarter is the validation split)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per regime (the first is not counted)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    n_val = args.n // 4
    print(f"{args.model}, {args.n - n_val} train / {n_val} val images, {len(LABELS)} labels, batch {args.batch_size},"
          f" {args.epochs} epochs, {device.type} ({torch.get_num_threads()} threads)")

    # One image set per size, as the grid preprocesses each size once (no resizing inside the loop).
    splits_at = {size: _splits(*_data(args.n, size), n_val) for size in sorted({args.size, *args.sizes})}
    splits = splits_at[args.size]
    results = {
        "finetune": _finetune(args.model, args.size, splits, args=args, device=device),
        "lora": _finetune(args.model, args.size, splits, args=args, device=device, lora=True),
    }
    model = _model(args.model, args.size, device).eval()
    feats, extract_s = _extract(model, splits, args.size, args=args, device=device)
    head = model.get_classifier()
    results["linear_probe"] = _fit(
        head, FeatureDataset(splits["train"], feats["train"]), FeatureDataset(splits["val"], feats["val"]),
        args=args, lr=1e-3, device=device,
    )

    base = results["finetune"]["epoch_s"]
    print(f"\nregimes at {args.size} px: time per epoch (train + validation), ratio = finetune / regime")
    for name, r in results.items():
        print(f"  {name:<13} {r['epoch_s'] * 1e3:10.1f} ms/epoch  {r['img_s']:10.0f} img/s  x{base / r['epoch_s']:7.1f}"
              f"  {r['trainable']:>11,} trainable parameters")
    probe = results["linear_probe"]["epoch_s"]
    print(f"  feature extraction (once per init, dataset, size; train + val): {extract_s * 1e3:.1f} ms "
          f"= {extract_s / base:.2f} finetune epochs; probe + extraction beat finetune after "
          f"{extract_s / max(base - probe, 1e-9):.2f} epochs")
    verdict = "PASS" if base / probe >= 20 else "BELOW TARGET"
    print(f"  target: linear_probe >= 20x faster per epoch than finetune: {verdict} (x{base / probe:.1f})")

    print("\nsize axis: finetune per epoch and one feature extraction, ratio to the smallest size")
    sizes = sorted(set(args.sizes))
    per_size = {}
    for size in sizes:
        at = splits_at[size]
        ft = results["finetune"] if size == args.size else _finetune(args.model, size, at, args=args, device=device)
        _, ex = _extract(_model(args.model, size, device).eval(), at, size, args=args, device=device)
        per_size[size] = (ft["epoch_s"], ex)
    s0 = sizes[0]
    for size, (ep, ex) in per_size.items():
        print(f"  {size:5d} px  finetune {ep * 1e3:10.1f} ms/epoch (x{ep / per_size[s0][0]:5.2f})   "
              f"extraction {ex * 1e3:10.1f} ms (x{ex / per_size[s0][1]:5.2f})")


if __name__ == "__main__":
    main()
