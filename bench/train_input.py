"""Benchmark: training-input images/s per CPU core (decode + augment to 224 px), PNG vs packed cache.

Baseline, measured in the same run: the study's per-sample loader (paper-methods.md §3) -- read the image as
3-channel 8-bit, ``ToPILImage -> RandomHorizontalFlip -> RandomRotation(7) -> ToTensor`` with torchvision's
classic transforms. Then cxrbench's ``CxrDataset`` from the PNGs and from the memory-mapped cache.
Target: >= 250 img/s per core from the cache.

    python bench/train_input.py [--n 400] [--size 224]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from cxrbench.training.data import CachedImages, CxrDataset, PngImages, SplitData
from PIL import Image
from torchvision import transforms as T


def _images(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Radiograph-like grey images: smooth anatomy-scale structure plus noise (PNG-compresses realistically)."""
    yy, xx = np.mgrid[:size, :size] / size
    out = np.empty((n, size, size), np.uint8)
    for i in range(n):
        a, b, c = rng.uniform(2, 6, 3)
        img = (
            120
            + 60 * np.sin(a * xx * np.pi) * np.cos(b * yy * np.pi)
            + 30 * np.sin(c * (xx + yy))
            + rng.normal(0, 12, (size, size))
        )
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def _rate(fn, n: int, repeats: int = 3) -> float:
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        for i in range(n):
            fn(i)
        best = max(best, n / (time.perf_counter() - t))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    torch.set_num_threads(1)  # per core
    rng = np.random.default_rng(0)
    arr = _images(args.n, args.size, rng)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = []
        for i, img in enumerate(arr):
            paths.append(tmp / f"{i:05d}.png")
            Image.fromarray(img, mode="L").save(paths[-1])
        np.save(tmp / "train.npy", arr)
        cache = np.load(tmp / "train.npy", mmap_mode="r")
        ids = np.array([str(i) for i in range(args.n)], dtype=object)
        targets = np.zeros((args.n, 3), np.float32)

        study = T.Compose([T.ToPILImage(), T.RandomHorizontalFlip(0.5), T.RandomRotation(7), T.ToTensor()])

        def baseline(i: int) -> torch.Tensor:
            rgb = np.asarray(Image.open(paths[i]).convert("RGB"))  # cv2.imread: 3-channel uint8
            return study(rgb)

        def dataset(images) -> CxrDataset:
            data = SplitData("train", ids, ids, targets, images)
            return CxrDataset(data, img_size=args.size, train=True, hflip=0.5, rotation=7, seed=1)

        png_ds = dataset(PngImages(paths))
        cache_ds = dataset(CachedImages(cache, np.arange(args.n)))
        rates = {
            "baseline (study loader, PNG)": _rate(baseline, args.n),
            "cxrbench PNG": _rate(lambda i: png_ds[i], args.n),
            "cxrbench cache": _rate(lambda i: cache_ds[i], args.n),
        }
    base = rates["baseline (study loader, PNG)"]
    print(f"training input, {args.n} images {args.size}x{args.size}, decode + flip + rotate +-7 deg, 1 thread")
    for name, r in rates.items():
        print(f"  {name:<30} {r:8.0f} img/s/core   x{r / base:5.2f} vs baseline")
    verdict = "PASS" if rates["cxrbench cache"] >= 250 else "FAIL"
    print(f"  target >= 250 img/s/core from the cache: {verdict}")


if __name__ == "__main__":
    main()
