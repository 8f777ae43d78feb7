"""A stand-in training job for tests/test_slurm.py: counts epochs, checkpoints after each one, and
resumes from the checkpoint when started again (after a SLURM requeue or a Snakemake retry).

Every start appends one line to ``<checkpoint dir>/starts.jsonl`` so the test can see where each
attempt resumed; ``--out`` gets the list of epochs run, in order, over all attempts.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--pause", type=float, required=True)
    parser.add_argument("--mem-mb", default="", help="the memory Snakemake requested (grows per attempt)")
    args = parser.parse_args()

    state = {"epoch": 0, "ran": []}
    if args.checkpoint.is_file():
        state = json.loads(args.checkpoint.read_text())
    args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    with open(args.checkpoint.parent / "starts.jsonl", "a", encoding="utf-8") as fh:
        start = {
            "from_epoch": state["epoch"] + 1,
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "mem_mb": args.mem_mb,
        }
        fh.write(json.dumps(start) + "\n")
    for epoch in range(state["epoch"] + 1, args.epochs + 1):
        time.sleep(args.pause)
        state = {"epoch": epoch, "ran": [*state["ran"], epoch]}
        tmp = args.checkpoint.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(args.checkpoint)  # atomic: a kill never leaves half a checkpoint
        print(f"epoch {epoch} done", flush=True)
    args.out.write_text(json.dumps({"ran": state["ran"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
