"""Cost of the per-shard source fingerprints at DAG time, in-process and inside real Snakemake runs.

    python bench/shard_fingerprint.py [--images 100000] [--shard-size 2000] [--keep DIR]

Builds a workspace of ``--images`` empty source files (5,000 per folder) with the real shard plan and
membership files, and a Snakefile of the preprocessing rules only (cache off). Then:

1. in-process, over every shard: ``stat_sources`` (one ``os.stat`` per image, the chosen strategy) against
   ``os.scandir`` per folder (the alternative), and the full ``source_fingerprint`` (membership read, stats,
   hash), in microseconds per image;
2. Snakemake: ``--touch --forceall`` once (outputs present, metadata with the recorded fingerprints), then
   times a no-op rerun (every shard's fingerprint is computed and compared: "Nothing to be done") and
   ``snakemake -n``, then ``touch``es one source image and checks that a dry run lists exactly one shard job.

The baseline, measured in the same run, is the same workspace at 1% of the images: the Snakemake ratios
show what the fingerprints add on top of Snakemake's fixed start-up. Exits 1 when the full-size no-op
rerun or dry run exceeds ``--limit`` seconds.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import pandas as pd
import yaml
from _common import run_snakemake, scratch_dir

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

from cxrbench.paths import Layout
from cxrbench.preprocess import shards

FANOUT = 5000  # source files per folder
VARIANT = "paper-224"
SNAKEFILE = f"""
configfile: "config.yaml"
include: "{REPO}/workflow/rules/common.smk"
include: "{REPO}/workflow/rules/preprocess.smk"

rule all:
    input: preprocess_targets()
"""


def workspace(root: Path, n_images: int, shard_size: int) -> list[Path]:
    """Empty sources, labels, plan and membership files, outputs present; returns the membership files."""
    data = root / "data"
    rel = [f"images/{k // FANOUT:03d}/img{k:07d}.png" for k in range(n_images)]
    for folder in {r.rsplit("/", 1)[0] for r in rel}:
        (data / folder).mkdir(parents=True, exist_ok=True)
    for r in rel:
        os.close(os.open(data / r, os.O_CREAT | os.O_WRONLY, 0o644))
    layout = Layout(root / "results")
    labels = pd.DataFrame({"image_id": [f"img{k:07d}" for k in range(n_images)], "source_path": rel})
    layout.labels("demo").parent.mkdir(parents=True, exist_ok=True)
    labels.to_parquet(layout.labels("demo"), index=False)
    plan = shards.plan_shards(labels, shard_size=shard_size)
    layout.png_dir("demo", VARIANT).mkdir(parents=True, exist_ok=True)
    plan.to_parquet(layout.shard_plan("demo", VARIANT), index=False)
    shards.write_memberships(plan, layout.shard_members("demo", VARIANT, 0).parent)
    # Every output exists, so `--touch` only records metadata (the fingerprints included).
    for k in sorted(set(plan["shard"])):
        layout.shard_dir("demo", VARIANT, k).mkdir(exist_ok=True)
        layout.shard_manifest("demo", VARIANT, k).touch()
    layout.manifest("demo", VARIANT).touch()
    layout.rejected("demo", VARIANT).touch()
    config = {
        "results": "results",
        "demo": {"enabled": False},
        "datasets": {"demo": {"adapter": "chestxray14", "root": "data"}},
        "initialisations": {"random": {"model": "vit_tiny_patch16_224", "source": "none"}},
        "preprocess": {"mode": "paper", "size": 224, "shard_size": shard_size, "cache": False},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    (root / "Snakefile").write_text(SNAKEFILE)
    return sorted(layout.shard_members("demo", VARIANT, 0).parent.glob("shard-*.tsv"))


def scandir_stats(root: Path, per_shard: list[list[str]]) -> list[list[tuple[int, int] | None]]:
    """The alternative: each folder scanned once for all shards (its best case), ``DirEntry.stat()`` per file."""
    found: dict[str, tuple[int, int]] = {}
    for folder in {p.rpartition("/")[0] for paths in per_shard for p in paths}:
        with os.scandir(root / folder) as entries:
            for entry in entries:
                st = entry.stat()  # on Linux still one stat call per entry: d_type carries no size/mtime
                found[f"{folder}/{entry.name}"] = (st.st_size, st.st_mtime_ns)
    return [[found.get(p) for p in paths] for paths in per_shard]


def in_process(root: Path, members: list[Path]) -> dict[str, float]:
    """Microseconds per image of each strategy over every shard."""
    per_shard = [shards.read_members(m)["source_path"].tolist() for m in members]
    n = sum(len(s) for s in per_shard)
    out = {}
    for name, fn in (("os.stat", lambda: [shards.stat_sources(root / "data", s) for s in per_shard]),
                     ("scandir", lambda: scandir_stats(root / "data", per_shard))):
        t0 = time.perf_counter()
        results = fn()
        out[name] = (time.perf_counter() - t0) / n * 1e6
        assert all(r is not None for res in results for r in res)
    shards._FINGERPRINTS.clear()
    t0 = time.perf_counter()
    for m in members:
        shards.source_fingerprint(m, root=root / "data")
    out["source_fingerprint"] = (time.perf_counter() - t0) / n * 1e6
    t0 = time.perf_counter()
    for m in members:
        shards.source_fingerprint(m, root=root / "data")
    out["cached"] = (time.perf_counter() - t0) / n * 1e6
    return out


def snakemake(work: Path, *args: str) -> tuple[float, str]:
    """Run Snakemake in ``work``; (wall seconds, combined output)."""
    return run_snakemake(["-s", "Snakefile", "--cores", "1"], args, cwd=work)


def snakemake_timings(work: Path) -> dict[str, float]:
    """No-op rerun and dry-run seconds once metadata exists; checks a `touch` reruns exactly one shard."""
    snakemake(work, "--touch", "--forceall")
    noop, out = snakemake(work)
    if "Nothing to be done" not in out:
        raise SystemExit(f"the no-op rerun was not a no-op:\n{out[-3000:]}")
    dry, _ = snakemake(work, "-n")
    first = next((work / "data" / "images").glob("*/*.png"))
    time.sleep(0.01)
    first.touch()
    _, out = snakemake(work, "-n")
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)\s*$", out, re.MULTILINE))
    if jobs.get("preprocess_shard") != "1":
        raise SystemExit(f"touching {first} should rerun exactly one shard:\n{out[-3000:]}")
    return {"noop": noop, "dry": dry}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000, help="source images in the full workspace")
    parser.add_argument("--shard-size", type=int, default=2000)
    parser.add_argument("--limit", type=float, default=15.0, help="seconds allowed for each full-size timing")
    parser.add_argument("--keep", type=Path, help="build the workspaces here and keep them")
    args = parser.parse_args()

    with scratch_dir(args.keep, prefix="cxrbench-shardfp-") as tmp:
        t0 = time.perf_counter()
        n_base = max(1, args.images // 100)
        base_members = workspace(tmp / "baseline", n_base, args.shard_size)
        members = workspace(tmp / "full", args.images, args.shard_size)
        print(f"workspace: {args.images:,} images in {len(members)} shards (+ {n_base:,} baseline, "
              f"{len(base_members)} shards) written in {time.perf_counter() - t0:.1f} s")

        us = in_process(tmp / "full", members)
        print(f"in-process, per image: os.stat {us['os.stat']:.2f} us, scandir once per folder {us['scandir']:.2f} us "
              f"(os.stat {us['scandir'] / us['os.stat']:.2f}x faster); source_fingerprint "
              f"{us['source_fingerprint']:.2f} us ({us['source_fingerprint'] * args.images / 1e6:.2f} s in all), "
              f"cached {us['cached']:.3f} us")

        base = snakemake_timings(tmp / "baseline")
        full = snakemake_timings(tmp / "full")
        for key, label in (("noop", "no-op rerun"), ("dry", "snakemake -n")):
            print(f"{label:13s}: 1% baseline ({n_base:,} images) {base[key]:6.2f} s, full ({args.images:,}) "
                  f"{full[key]:6.2f} s, ratio {full[key] / base[key]:.2f}x; "
                  f"{(full[key] - base[key]) / (args.images - n_base) * 1e6:.1f} us per added image")
        print("touch of one source: dry run lists exactly 1 shard job (checked in both workspaces)")
        ok = full["noop"] <= args.limit and full["dry"] <= args.limit
        print(f"limit {args.limit:.0f} s: {'PASS' if ok else 'FAIL'}")
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
