#!/usr/bin/env bash
# GPU check for the fine-tuning stage: ViT-B/16 and ViT-B/14 training img/s at 224 px in bf16 and peak memory,
# then one epoch of the real training loop (cxrbench.training.loop.fit) from an in-memory uint8 cache with
# loader workers. Random weights only (no hub, works offline); finishes in ~2-4 minutes on one GPU.
# Target: >= 2,500 img/s for ViT-B/16 on one H200. Exits 0 with a message where there is no GPU.
#
#   bash bench/gpu_check.sh            (from the repository root, with the venv / train env active)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA GPU visible to torch here - nothing to measure (exit 0)."
  exit 0
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

HF_HUB_OFFLINE=1 CUBLAS_WORKSPACE_CONFIG=:4096:8 timeout 420 "$PY" - <<'PYEOF'
import time, logging
import numpy as np
import torch, timm
from cxrbench.training.loop import masked_bce, fit, FitConfig
from cxrbench.training.data import CachedImages, CxrDataset, SplitData

dev = torch.device("cuda")
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
print(f"torch {torch.__version__}, timm {timm.__version__}, {torch.cuda.get_device_name(0)}")
L = 14
results = []

def step_rate(name, batch, steps=40, warmup=10):
    model = timm.create_model(name, pretrained=False, num_classes=L, img_size=224).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0, fused=True)
    w = torch.ones(L, device=dev)
    x = torch.rand(batch, 3, 224, 224, device=dev)
    y = (torch.rand(batch, L, device=dev) > 0.8).float()
    torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + steps):
        if i == warmup:
            torch.cuda.synchronize(); t = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(x)
        loss = masked_bce(logits, y, w)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    torch.cuda.synchronize()
    rate = steps * batch / (time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2**30
    results.append((name, batch, rate, peak))
    print(f"  {name:<28} batch {batch:4d}: {rate:8.0f} img/s   peak {peak:5.1f} GiB", flush=True)
    del model, opt

print("model step (bf16 autocast, AdamW fused, weighted BCE), synthetic GPU tensors:")
for name in ("vit_base_patch16_224", "vit_base_patch14_dinov2"):
    for batch in (32, 128):
        step_rate(name, batch)

print("end to end: cxrbench fit(), 1 epoch, uint8 cache in memory, flip+rotate on 8 loader workers, batch 32:")
logging.basicConfig(level=logging.INFO, format="    %(message)s")
rng = np.random.default_rng(0)
n_train, n_val = 6144, 512
arr = rng.integers(0, 255, (n_train + n_val, 224, 224), dtype=np.uint8)
y = (rng.random((n_train + n_val, L)) < 0.2).astype(np.float32)
def split(lo, hi, train):
    ids = np.array([str(i) for i in range(lo, hi)], dtype=object)
    data = SplitData("train" if train else "val", ids, ids, y[lo:hi], CachedImages(arr, np.arange(lo, hi)))
    return CxrDataset(data, img_size=224, train=train, hflip=0.5, rotation=7, seed=1)
import tempfile, pathlib
torch.manual_seed(0)
model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=L, img_size=224)
with tempfile.TemporaryDirectory() as tmp:
    res = fit(model, split(0, n_train, True), split(n_train, n_train + n_val, False),
              cfg=FitConfig(epochs=1, batch_size=32, lr=1e-5, precision="bf16", seed=1),
              labels=[f"l{i}" for i in range(L)], out_dir=pathlib.Path(tmp), device=dev, fingerprint="gpu-check",
              num_workers=8)
e2e = res.history[0]["train_img_per_s"]
print()
print("SUMMARY")
for name, batch, rate, peak in results:
    print(f"  {name:<28} b{batch:<4d} {rate:8.0f} img/s  peak {peak:5.1f} GiB")
print(f"  end-to-end fit() ViT-B/16 b32   {e2e:8.0f} img/s (includes data loading)")
b16 = max(r for n, b, r, p in results if n == "vit_base_patch16_224")
print(f"  target >= 2500 img/s ViT-B/16 (best batch): {'PASS' if b16 >= 2500 else 'BELOW TARGET'} ({b16:.0f})")
PYEOF

# --- compute plan: measured-throughput row for resources/gpus.csv (issue 13 section 2; owner: the plan) -----------
# Times ViT-B/16 fine-tuning steps at 224 px in bf16, batch 32 (the study's recipe), counts their FLOPs with the plan's
# own counter and appends a row with the measured model-FLOP utilisation to resources/gpus.csv; `cxrbench plan` uses
# the last row of a GPU name, so this row replaces the data sheet's assumed MFU. GPUS_CSV=path writes elsewhere.
echo "compute plan: measuring MFU for resources/gpus.csv"
HF_HUB_OFFLINE=1 timeout 300 "$PY" -m cxrbench.plan.measure --device cuda --model vit_base_patch16_224 --size 224 \
  --batch 32 --precision bf16 --append "${GPUS_CSV:-resources/gpus.csv}"
# --- end of the compute-plan block ------------------------------------------------------------------------------
