"""The cost model of the compute plan: FLOPs per image, sustained throughput per GPU, peak device memory.

* FLOPs: one forward pass of the exact timm architecture at the exact size, counted by PyTorch's own
  ``torch.utils.flop_counter.FlopCounterMode`` on the ``meta`` device (no memory, no arithmetic: a ViT-B costs
  ~0.2 s), once per (architecture, size). A multiply-add counts as 2 FLOPs.
* Step cost per image, in forward passes F: full fine-tuning 3F (forward, then activation and weight gradients,
  each about F); LoRA 2F (the frozen backbone needs activation gradients but no weight gradients; the adapters'
  own cost is below 1 %); gradient checkpointing recomputes the forward once more (+F). A linear probe trains on
  features extracted once (one forward per image) and costs nothing on the GPU itself.
* Throughput: peak TFLOP/s from the vendor's data sheet for the training precision (``resources/gpus.csv``)
  times a model-FLOP utilisation (MFU): the row's value (a documented default, or measured by
  ``python -m cxrbench.plan.measure``, which ``bench/gpu_check.sh`` runs), or ``plan.mfu``.
* Memory: fp32 weights, gradients and both AdamW moments (16 B per trained parameter) plus stored activations
  per image per block (bytes per token per channel in :data:`ACTIVATION_BYTES`) times the batch size.
"""

from __future__ import annotations

import csv
import functools
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from cxrbench.config import RESOURCES

_logger = logging.getLogger(__name__)

__all__ = [
    "ACTIVATION_BYTES",
    "GPUS_CSV",
    "GpuSpec",
    "ModelShape",
    "PlanError",
    "gpu_spec",
    "load_gpus",
    "model_shape",
    "peak_memory_bytes",
    "step_passes",
    "sustained_flops",
]

GPUS_CSV = RESOURCES / "gpus.csv"
GPU_COLUMNS = ("gpu", "peak_bf16_tflops", "peak_fp16_tflops", "peak_fp32_tflops", "memory_gb", "mfu", "source")

# Stored activations per image per transformer block, in bytes per token per channel of the width, with fused
# attention (PyTorch's scaled_dot_product_attention keeps no tokens x tokens matrix). Counted tensor by tensor
# for a timm ViT block without dropout: LayerNorm-1 input (fp32 residual), qkv input, q, k, v, attention
# output, LayerNorm-2 input (fp32 residual), fc1 input, fc1 output (4x width), GELU output (4x width).
# Under bf16/fp16 autocast the matmul operands are 2 bytes and the residual stream and LayerNorms stay fp32:
# 4 + 2 + 6 + 2 + 4 + 2 + 8 + 8 = 36 (Korthikanti et al. 2022 count 34 for GPT blocks with dropout masks
# and 2-byte residuals). In fp32 everything is 4 bytes and the qkv input is the LayerNorm output: 16 x 4 = 64.
ACTIVATION_BYTES = {"bf16": 36, "fp16": 36, "fp32": 64}
# Trained parameters hold fp32 weights, gradients and AdamW's two moments; frozen ones only their weights.
TRAINED_PARAM_BYTES = 16
FROZEN_PARAM_BYTES = 4
# Inference keeps no activations for backward; the largest live tensors are a block's input, output and MLP
# hidden layer: about 8 tokens x width values per image.
INFERENCE_VALUES_PER_TOKEN_WIDTH = 8


class PlanError(ValueError):
    """The plan cannot be made: an unknown GPU, a precision the GPU lacks, a malformed gpus.csv."""


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs to know about one architecture at one input size."""

    architecture: str
    img_size: int
    forward_flops: int  # one image, one forward pass, FlopCounterMode
    params: int
    tokens: int  # patches plus prefix tokens (CLS, registers)
    width: int
    depth: int

    @property
    def feature_dim(self) -> int:
        """Width of the pooled features a linear probe trains on."""
        return self.width


@functools.cache
def model_shape(architecture: str, *, img_size: int) -> ModelShape:
    """FLOPs of one forward pass of one image and the shape of ``architecture`` (timm name, no tag) at ``img_size``.

    Built on the ``meta`` device, so nothing is allocated and no arithmetic runs; counted once per process for each
    (architecture, size). The classifier is given 14 outputs (its cost is below 0.01 % of a ViT).
    """
    import timm
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = timm.create_model(architecture, pretrained=False, num_classes=14, img_size=img_size)
        x = torch.empty(1, 3, img_size, img_size)
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    blocks = getattr(model, "blocks", None)
    embed = getattr(model, "patch_embed", None)
    if blocks is None or embed is None:
        raise PlanError(f"{architecture!r} is not a timm vision transformer: the plan's memory model needs its "
                        "blocks and patch embedding")
    grid = embed.grid_size
    tokens = int(grid[0] * grid[1]) + int(getattr(model, "num_prefix_tokens", 1))
    shape = ModelShape(
        architecture=architecture,
        img_size=img_size,
        forward_flops=int(counter.get_total_flops()),
        params=sum(p.numel() for p in model.parameters()),
        tokens=tokens,
        width=int(model.embed_dim),
        depth=len(blocks),
    )
    _logger.debug("%s at %d px: %.2f GFLOPs per image forward", architecture, img_size, shape.forward_flops / 1e9)
    return shape


def step_passes(regime: str, *, grad_checkpointing: bool) -> float:
    """Cost of one training image in forward passes (see the module docstring); 0 for a linear probe."""
    if regime == "linear_probe":
        return 0.0
    base = {"finetune": 3.0, "lora": 2.0}.get(regime)
    if base is None:
        raise PlanError(f"unknown regime {regime!r}")
    return base + (1.0 if grad_checkpointing else 0.0)


@dataclass(frozen=True)
class GpuSpec:
    """One row of ``resources/gpus.csv``."""

    gpu: str
    peak_bf16_tflops: float | None
    peak_fp16_tflops: float | None
    peak_fp32_tflops: float
    memory_gb: float
    mfu: float
    source: str

    def peak_tflops(self, precision: str) -> float:
        """Data-sheet peak for ``precision`` (bf16, fp16 or fp32; dense, without sparsity)."""
        value = {"bf16": self.peak_bf16_tflops, "fp16": self.peak_fp16_tflops, "fp32": self.peak_fp32_tflops}[precision]
        if value is None:
            raise PlanError(f"GPU {self.gpu!r} has no {precision} peak in gpus.csv (no {precision} tensor cores): "
                            "set training.precision to one it has")
        return value


def _key(name: str) -> str:
    """Lookup key of a GPU name: lower case, letters and digits only ('A100 80GB' == 'a100-80gb')."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _number(row: dict[str, str], column: str, path: Path, *, optional: bool = False) -> float | None:
    text = (row.get(column) or "").strip()
    if not text and optional:
        return None
    try:
        return float(text)
    except ValueError:
        raise PlanError(f"{path}: GPU {row.get('gpu')!r}: column {column!r} is not a number: {text!r}") from None


def load_gpus(path: Path = GPUS_CSV) -> dict[str, GpuSpec]:
    """The GPU table keyed by normalised name; of several rows for one GPU the last wins (measured rows are appended)."""
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(row for row in fh if not row.startswith("#")))
    if rows and set(GPU_COLUMNS) - set(rows[0]):
        raise PlanError(f"{path}: columns must be {', '.join(GPU_COLUMNS)}")
    table: dict[str, GpuSpec] = {}
    for row in rows:
        spec = GpuSpec(
            gpu=row["gpu"].strip(),
            peak_bf16_tflops=_number(row, "peak_bf16_tflops", path, optional=True),
            peak_fp16_tflops=_number(row, "peak_fp16_tflops", path, optional=True),
            peak_fp32_tflops=_number(row, "peak_fp32_tflops", path),
            memory_gb=_number(row, "memory_gb", path),
            mfu=_number(row, "mfu", path),
            source=row["source"].strip(),
        )
        if not 0 < spec.mfu <= 1:
            raise PlanError(f"{path}: GPU {spec.gpu!r}: mfu {spec.mfu} is not in (0, 1]")
        if not spec.source:
            raise PlanError(f"{path}: GPU {spec.gpu!r} names no source")
        table[_key(spec.gpu)] = spec
    return table


def gpu_spec(name: str, *, path: Path = GPUS_CSV) -> GpuSpec:
    """The row of GPU ``name`` (case, spaces and dashes ignored); a clear error lists the known names."""
    table = load_gpus(path)
    spec = table.get(_key(name))
    if spec is None:
        known = ", ".join(s.gpu for s in table.values())
        raise PlanError(f"unknown GPU {name!r} (known in {path}: {known}); add a row with its data-sheet peaks")
    return spec


def sustained_flops(gpu: GpuSpec, *, precision: str, mfu: float | None = None) -> float:
    """Sustained FLOP/s of model arithmetic: data-sheet peak for ``precision`` x MFU (``mfu`` overrides the row's)."""
    return gpu.peak_tflops(precision) * 1e12 * (gpu.mfu if mfu is None else mfu)


def peak_memory_bytes(
    shape: ModelShape,
    *,
    regime: str,
    batch_size: int,
    precision: str,
    grad_checkpointing: bool,
) -> int:
    """Peak device memory of one training step (or of feature extraction for ``linear_probe``), in bytes.

    Parameters: 16 B each when trained (finetune), 4 B when frozen (lora: the adapters and head are < 1 %;
    linear_probe). Activations per image: ``depth x tokens x width x ACTIVATION_BYTES[precision]``; with gradient
    checkpointing only each block's fp32 input is kept (4 B per token per channel), plus one block's full set
    during its recomputation. Allocator slack and the CUDA context (~0.5 GB) are not included.
    """
    per_block = shape.tokens * shape.width
    if regime == "linear_probe":
        act_bytes = 2 if precision in ("bf16", "fp16") else 4
        return shape.params * FROZEN_PARAM_BYTES + batch_size * per_block * INFERENCE_VALUES_PER_TOKEN_WIDTH * act_bytes
    params = shape.params * (TRAINED_PARAM_BYTES if regime == "finetune" else FROZEN_PARAM_BYTES)
    block = per_block * ACTIVATION_BYTES[precision]
    per_image = shape.depth * per_block * 4 + block if grad_checkpointing else shape.depth * block
    return params + batch_size * per_image
