"""Measured rows for ``resources/gpus.csv``: the model-FLOP utilisation of real training steps on this device.

    python -m cxrbench.plan.measure --device cuda [--append resources/gpus.csv]      (bench/gpu_check.sh runs this)
    python -m cxrbench.plan.measure --device cpu --model vit_tiny_patch16_224 --size 32 --batch 16 --threads 1

Times full fine-tuning steps (forward, weighted BCE, backward, AdamW) of a randomly initialised timm model on
synthetic tensors already on the device, counts their FLOPs with the plan's own counter (3 forward passes per
image) and divides the achieved FLOP/s by the peak: the data-sheet peak of the matching gpus.csv row on a GPU; on
the CPU, which has no data sheet, the best rate of a large fp32 matrix product measured in the same run (so the CPU
row's peak is that sustained GEMM rate and its MFU the step's share of it).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import itertools
import logging
import sys
import time
from pathlib import Path
from typing import Any

from cxrbench.plan.model import GPU_COLUMNS, GPUS_CSV, PlanError, gpu_spec, model_shape, step_passes

_logger = logging.getLogger(__name__)

__all__ = ["gemm_tflops", "gpu_name", "measured_row", "train_step_rate"]

# torch.cuda.get_device_name() fragments -> gpus.csv names, most specific first.
_NAME_RULES = (("h200", "H200"), ("h100pcie", "H100-PCIe"), ("h100", "H100-SXM"), ("a10080gb", "A100-80GB"),
               ("a100sxm480gb", "A100-80GB"), ("a100", "A100-40GB"), ("l40s", "L40S"), ("v100", "V100"),
               ("rtx4090", "RTX-4090"))


def gpu_name(device_name: str) -> str:
    """The gpus.csv name of a CUDA device name ('NVIDIA A100-SXM4-80GB' -> 'A100-80GB'); PlanError if unknown."""
    key = "".join(c for c in device_name.lower() if c.isalnum())
    for fragment, name in _NAME_RULES:
        if fragment in key:
            return name
    raise PlanError(f"no gpus.csv row for device {device_name!r}: add its data-sheet row to {GPUS_CSV}")


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def gemm_tflops(device: Any, *, n: int = 1024, repeats: int = 20) -> float:
    """Best fp32 TFLOP/s of an n x n matrix product on ``device`` over ``repeats`` tries."""
    import torch

    a, b = torch.rand(n, n, device=device), torch.rand(n, n, device=device)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e12


def train_step_rate(architecture: str, *, img_size: int, batch_size: int, device: Any, precision: str,
                    steps: int = 20, warmup: int = 3) -> float:
    """Images per second of full fine-tuning steps on synthetic device tensors (best of two timed halves)."""
    import contextlib

    import timm
    import torch

    from cxrbench.training.loop import masked_bce

    torch.manual_seed(0)
    n_labels = 14
    model = timm.create_model(architecture, pretrained=False, num_classes=n_labels, img_size=img_size).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-5)
    x = torch.rand(batch_size, 3, img_size, img_size, device=device)
    y = (torch.rand(batch_size, n_labels, device=device) > 0.8).float()
    weight = torch.ones(n_labels, device=device)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
                if device.type == "cuda" and precision != "fp32" else contextlib.nullcontext())
    model.train()
    times = []
    for i in range(warmup + steps):
        if i >= warmup and (i - warmup) % (steps // 2) == 0:
            _sync(device)
            times.append(time.perf_counter())
        with autocast:
            loss = masked_bce(model(x), y, weight)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    _sync(device)
    times.append(time.perf_counter())
    half = steps // 2
    return max(half * batch_size / (b - a) for a, b in itertools.pairwise(times))


def measured_row(*, device: str, architecture: str, img_size: int, batch_size: int, precision: str,
                 threads: int | None = None) -> dict[str, Any]:
    """A gpus.csv row with the MFU measured here (see the module docstring)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    rate = train_step_rate(architecture, img_size=img_size, batch_size=batch_size, device=dev, precision=precision)
    flops = rate * step_passes("finetune", grad_checkpointing=False) * model_shape(architecture, img_size=img_size).forward_flops
    today = datetime.date.today().isoformat()
    what = f"{architecture} {img_size} px {precision} batch {batch_size} train steps, {rate:.0f} img/s"
    if dev.type == "cpu":
        peak = gemm_tflops(dev)
        import os

        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
        return {"gpu": "cpu", "peak_bf16_tflops": round(peak, 4), "peak_fp16_tflops": round(peak, 4),
                "peak_fp32_tflops": round(peak, 4), "memory_gb": round(mem_gb), "mfu": round(flops / 1e12 / peak, 3),
                "source": f"python -m cxrbench.plan.measure --device cpu --threads {threads or torch.get_num_threads()} "
                          f"{today}: peak = best fp32 1024^2 GEMM here; {what}"}
    spec = gpu_spec(gpu_name(torch.cuda.get_device_name(dev)))
    mem_gb = torch.cuda.get_device_properties(dev).total_memory / 1e9
    return {"gpu": spec.gpu, "peak_bf16_tflops": spec.peak_bf16_tflops or "", "peak_fp16_tflops": spec.peak_fp16_tflops
            or "", "peak_fp32_tflops": spec.peak_fp32_tflops, "memory_gb": round(mem_gb),
            "mfu": round(flops / 1e12 / spec.peak_tflops(precision), 3),
            "source": f"bench/gpu_check.sh {today}: {what}; peaks from the data-sheet row"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--model", default="vit_base_patch16_224", help="timm architecture")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--append", type=Path, default=None, help="append the row to this gpus.csv")
    args = parser.parse_args(argv)
    try:
        row = measured_row(device=args.device, architecture=args.model, img_size=args.size, batch_size=args.batch,
                           precision="fp32" if args.device == "cpu" else args.precision, threads=args.threads)
    except PlanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    writer = csv.DictWriter(sys.stdout, fieldnames=GPU_COLUMNS, lineterminator="\n")
    writer.writerow(row)
    if args.append:
        with open(args.append, "a", encoding="utf-8", newline="") as fh:
            csv.DictWriter(fh, fieldnames=GPU_COLUMNS, lineterminator="\n").writerow(row)
        print(f"appended to {args.append}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
