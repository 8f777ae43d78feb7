"""DAG scale: `snakemake -n` and a no-op rerun on the study's ~800,000 images (6 datasets, 4 inits), on the
full experiment grid of resources/presets/grid.yaml (2 sizes x 3 seeds x 3 label fractions x 3 regimes).

    python bench/dag_scale.py [--scale 1.0] [--keep DIR] [--no-grid]

Builds a synthetic workspace in a temporary folder: the six datasets at the study's sizes, each a
folder of empty source files (the DAG only stats them: shard jobs list their existing source images
as inputs) plus its native label files, and four initialisations (three `none`, one `pipeline`
MIMIC arm). The shard plans and membership files (one per grid size) are written with the real
`cxrbench.preprocess` functions, so the DAG is exactly the one a real run sees after planning. With the
grid: 1,242 training runs, 46 feature sets, 6 fraction draws, 324 evaluation cells and the grid job;
`--no-grid` benchmarks the study's single cell per dataset instead. Then it times

  1. `snakemake -n` with every shard pending (the largest dry run a user meets), reporting the job
     count, and
  2. a no-op rerun (`snakemake --cores 1` with every output present: "Nothing to be done"),

and, as the baseline measured in the same run, `snakemake -n` on a 1% copy of the same workspace.
Prints seconds, jobs and the ratios; exits 1 if either full-size timing exceeds --limit (15 s).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import sys
import time
from pathlib import Path

import pandas as pd
import yaml
from _common import run_snakemake, scratch_dir

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

from cxrbench.datasets import label_files
from cxrbench.paths import Layout
from cxrbench.preprocess.shards import plan_shards, write_memberships

# Frontal images per dataset in the study (docs: paper-methods.md, section 2).
STUDY_SIZES = {
    "vindr": 18_000,
    "chestxray14": 112_120,
    "chexpert": 157_676,
    "mimic": 213_921,
    "uka": 193_361,
    "padchest": 110_525,
}
SUFFIX = {
    "vindr": ".dicom",
    "uka": ".dcm",
    "chexpert": ".jpg",
    "mimic": ".jpg",
    "chestxray14": ".png",
    "padchest": ".png",
}
FANOUT = 5000  # source files per folder


GRID_PRESET = REPO / "resources" / "presets" / "grid.yaml"


def make_config(root: Path, *, grid: bool) -> dict:
    """The synthetic study configuration (demo off, study datasets, four initialisations), relative to ``root``,
    with the grid of resources/presets/grid.yaml when ``grid``."""
    del root  # every path is relative to the workspace folder
    config = {
        "results": "results",
        "demo": {"enabled": False},
        "datasets": {ds: {"adapter": ds, "root": f"data/{ds}", "label_set": f"study_{ds}"} for ds in STUDY_SIZES},
        "preprocess": {"mode": "paper", "size": 224, "shard_size": 2000},
        "initialisations": {
            "dinov2": {"model": "vit_base_patch14_dinov2", "source": "none"},
            "in21k": {"model": "vit_base_patch16_224", "source": "none"},
            "random": {"model": "vit_base_patch16_224", "source": "none"},
            "mimic_sl": {
                "model": "vit_base_patch16_224",
                "source": "pipeline",
                "pretrain_dataset": "mimic",
                "pretrain_init": "in21k",
                "transfer": "backbone",
            },
        },
        "training": {"device": "cpu"},
    }
    if grid:
        config["grid"] = yaml.safe_load(GRID_PRESET.read_text())["grid"]
    return config


def sizes(config: dict) -> list[int]:
    return list((config.get("grid") or {}).get("sizes") or [config["preprocess"]["size"]])


def write_sources(config: dict, scale: float) -> int:
    """Empty source files and label files for every dataset; returns the number of images."""
    layout = Layout(config["results"])
    total = 0
    for ds, n_full in STUDY_SIZES.items():
        entry = config["datasets"][ds]
        root = Path(entry["root"])
        n = max(1, int(n_full * scale))
        for f in label_files(entry["adapter"], root, entry):
            f.parent.mkdir(parents=True, exist_ok=True)
            f.touch()
        rel = [f"images/{k // FANOUT:03d}/{ds}{k:07d}{SUFFIX[ds]}" for k in range(n)]
        for d in {r.rsplit("/", 1)[0] for r in rel}:
            (root / d).mkdir(parents=True, exist_ok=True)
        for r in rel:
            os.close(os.open(root / r, os.O_CREAT | os.O_WRONLY, 0o644))
        # Outputs of index and harmonise (only their mtimes matter to the DAG), then the real shard plan.
        for out in (
            layout.index(ds),
            layout.labels(ds),
            layout.labels_summary(ds, "csv"),
            layout.labels_summary(ds, "md"),
        ):
            out.parent.mkdir(parents=True, exist_ok=True)
            out.touch()
        labels = pd.DataFrame({"image_id": [f"{ds}{k:07d}" for k in range(n)], "source_path": rel})
        plan = plan_shards(labels, shard_size=config["preprocess"]["shard_size"])
        for size in sizes(config):  # one preprocessing variant per grid size
            variant = Layout.variant(config["preprocess"]["mode"], size)
            plan_path = layout.shard_plan(ds, variant)
            plan_path.parent.mkdir(parents=True, exist_ok=True)
            plan.to_parquet(plan_path, index=False)
            write_memberships(plan, layout.shard_members(ds, variant, 0).parent)
        total += n
    return total


def snakemake(work: Path, *args: str) -> tuple[float, float, str]:
    """Run the repository's Snakefile on the workspace ``work``; (wall seconds, CPU seconds, combined output).

    The CPU seconds (user + system of the Snakemake process) are what the wall time would be on an idle core: on
    a shared machine the wall time also counts the waits for one.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall, out = run_snakemake(["--snakefile", str(REPO / "Snakefile"), "--directory", str(work)], args)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), out


def job_count(output: str) -> int:
    m = re.search(r"^total\s+(\d+)\s*$", output, re.MULTILINE)
    return int(m.group(1)) if m else 0


def complete_outputs(work: Path, config: dict, dry_run_output: str) -> int:
    """Create every output a dry run lists (folders for the shard PNG outputs), newer than its inputs."""
    outs = set()
    for line in dry_run_output.splitlines():
        if line.startswith("    output: "):
            outs.update(p.strip() for p in line.removeprefix("    output: ").split(","))
    stamp = time.time() + 10  # newer than every source and membership file
    for rel in sorted(outs):
        path = work / rel
        if re.search(r"/shard-\d+$", rel):  # the shard PNG folders are directory() outputs
            path.mkdir(parents=True, exist_ok=True)
            path = path / ".snakemake_timestamp"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        os.utime(path, (stamp, stamp))
    # Outputs of the stages before the shard plan, in DAG order, older than everything after it.
    layout = Layout(config["results"])
    plans = {ds: [layout.shard_plan(ds, Layout.variant(config["preprocess"]["mode"], s)) for s in sizes(config)]
             for ds in config["datasets"]}
    for ds in config["datasets"]:
        for age, paths in (
            (4, [layout.index(ds)]),
            (3, [layout.labels(ds), layout.labels_summary(ds, "csv"), layout.labels_summary(ds, "md")]),
            (2, plans[ds]),
        ):
            for path in paths:
                os.utime(work / path, (stamp - age, stamp - age))
    return len(outs)


def workspace(root: Path, scale: float, *, grid: bool) -> tuple[Path, int]:
    """A workspace folder (config.yaml, data/, results/) at ``scale``; paths in it are relative to it."""
    root.mkdir(parents=True, exist_ok=True)
    config = make_config(root, grid=grid)
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    cwd = Path.cwd()
    os.chdir(root)
    try:
        return root, write_sources(config, scale)
    finally:
        os.chdir(cwd)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the study's image counts")
    parser.add_argument("--limit", type=float, default=15.0, help="seconds allowed for each full-size timing")
    parser.add_argument("--keep", type=Path, help="build the workspace here and keep it")
    parser.add_argument("--no-grid", dest="grid", action="store_false",
                        help="the study's one cell per dataset instead of the grid preset's axes")
    args = parser.parse_args()

    with scratch_dir(args.keep, prefix="cxrbench-dagscale-") as tmp:
        t0 = time.perf_counter()
        base, n_base = workspace(tmp / "baseline", args.scale * 0.01, grid=args.grid)
        work, n_images = workspace(tmp / "full", args.scale, grid=args.grid)
        print(f"workspace: {n_images:,} images (+ {n_base:,} baseline) written in {time.perf_counter() - t0:.1f} s")

        base_dry, base_cpu, out = snakemake(base, "-n", "--cores", "1")
        base_jobs = job_count(out)
        full_dry, full_cpu, out = snakemake(work, "-n", "--cores", "1")
        full_jobs = job_count(out)
        n_shards = len(re.findall(r"^(?:local)?rule preprocess_shard:$", out, re.MULTILINE))
        if n_shards == 0:
            raise SystemExit(f"the full dry run lists no shard job (the DAG is not the planned one):\n{out[-3000:]}")
        per_rule = dict(re.findall(r"^(\w+)\s+(\d+)\s*$", out.split("Job stats:")[-1], re.MULTILINE))
        n_out = complete_outputs(work, make_config(work, grid=args.grid), out)
        noop, noop_cpu, out = snakemake(work, "--cores", "1")
        if "Nothing to be done" not in out:
            raise SystemExit(f"the no-op rerun was not a no-op:\n{out[-3000:]}")
        print(f"dry run, 1% baseline ({n_base:,} images):  {base_dry:6.2f} s (cpu {base_cpu:6.2f} s)  {base_jobs} jobs")
        print(
            f"dry run, full ({n_images:,} images):    {full_dry:6.2f} s (cpu {full_cpu:6.2f} s)  {full_jobs} jobs"
            f" ({n_shards} shard jobs)  ratio {full_dry / base_dry:.2f}x for {n_images / n_base:.0f}x images"
        )
        print("jobs per rule: " + ", ".join(f"{rule} {n}" for rule, n in per_rule.items() if rule not in ("all", "total")))
        print(f"no-op rerun, full ({n_out} outputs):   {noop:6.2f} s (cpu {noop_cpu:6.2f} s)"
              f"  ratio {noop / base_dry:.2f}x baseline dry run")
        print(f"load average while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        ok = full_dry <= args.limit and noop <= args.limit
        print(f"limit {args.limit:.0f} s: {'PASS' if ok else 'FAIL'}")
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
