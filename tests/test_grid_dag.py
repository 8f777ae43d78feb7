"""The experiment grid in the DAG: the exact jobs a grid config plans, and adding a seed adds only its runs.

The workflow here is common.smk + train.smk + evaluate.smk over empty stand-ins for the files the earlier stages
write (labels, manifests, caches at every size), so each dry run takes seconds and needs no data.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml
from cxrbench.config import REPO_ROOT, validate_config
from cxrbench.paths import Layout

sys.path.insert(0, str(Path(__file__).parent / "slurm"))
from demo_run import planned_jobs

SIZES, SEEDS, FRACTIONS, REGIMES = [32, 48], [0, 1], [0.1, 1.0], ["finetune", "linear_probe"]
# (init, dataset) pairs with runs: the MIMIC chain has none on its own pre-training dataset.
PAIRS = [("random", "chexpert"), ("random", "mimic"), ("mimic_sl", "chexpert")]


def grid_config() -> dict:
    """The demo config on two datasets with a 2 x 2 x 2 x 2 grid, the chain in `backbone` transfer."""
    with open(REPO_ROOT / "config.yaml", encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh)
    cfg["results"] = "res"
    cfg["datasets"] = {ds: cfg["datasets"][ds] for ds in ("chexpert", "mimic")}
    cfg["initialisations"]["mimic_sl"]["transfer"] = "backbone"
    cfg["grid"] = {"sizes": SIZES, "seeds": SEEDS, "label_fractions": FRACTIONS, "regimes": REGIMES}
    return cfg


def _workflow(work: Path, config: dict) -> Path:
    """A Snakefile with the training and evaluation rules, and empty stand-ins for every earlier stage's output."""
    (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    rules = REPO_ROOT / "workflow" / "rules"
    (work / "Snakefile").write_text(
        f'configfile: "config.yaml"\nreport: "{REPO_ROOT / "workflow" / "report" / "workflow.rst"}"\n'
        + "".join(f'include: "{rules / name}"\n' for name in ("common.smk", "train.smk", "evaluate.smk"))
        + "rule all:\n    input: train_targets() + evaluate_targets()\n"
    )
    layout = Layout(work / config["results"])
    cfg = validate_config(copy.deepcopy(config))
    for ds in cfg["datasets"]:
        paths = [layout.labels(ds)]
        for size in cfg["grid"].get("sizes") or [cfg["preprocess"]["size"]]:
            variant = Layout.variant(cfg["preprocess"]["mode"], size)
            paths += [layout.manifest(ds, variant)] + [
                layout.cache_dir(ds, variant) / f"{s}{e}" for s in ("train", "val", "test") for e in (".npy", ".index.parquet")
            ]
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    return work


def _snakemake(work: Path, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(work / "Snakefile"), "-d", str(work), "-c1", *args],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _jobs(output: str) -> set[tuple[str, tuple]]:
    return {(rule, tuple(sorted(wc.items()))) for rule, wc in planned_jobs(output)}


def _job(rule: str, **wildcards: object) -> tuple[str, tuple]:
    return rule, tuple(sorted((k, str(v)) for k, v in wildcards.items()))


def _frac(f: float) -> str:
    return "1" if f == 1.0 else str(f)


def _expected(seeds: list[int]) -> set[tuple[str, tuple]]:
    """Every job of the grid config with these seeds, written out axis by axis."""
    cells = [(s, r, f, k) for s in SIZES for r in REGIMES for f in FRACTIONS for k in seeds]
    jobs = {_job("pretrain", init="mimic_sl", pds="mimic", size=s, scope="all-labels") for s in SIZES}
    jobs |= {_job("fractions", ds=ds) for ds in ("chexpert", "mimic")}
    jobs |= {_job("features", init=i, ds=ds, size=s) for i, ds in PAIRS for s in SIZES}
    jobs |= {
        _job("train", init=i, ds=ds, size=s, regime=r, fraction=_frac(f), seed=k)
        for i, ds in PAIRS
        for s, r, f, k in cells
    }
    jobs |= {
        _job("evaluate", ds=ds, size=s, regime=r, fraction=_frac(f), seed=k)
        for ds in ("chexpert", "mimic")
        for s, r, f, k in cells
    }
    return jobs | {_job("aggregate"), _job("grid")}


def test_grid_config_plans_exactly_the_grid(tmp_path: Path) -> None:
    out = _snakemake(_workflow(tmp_path, grid_config()), "-n", "-p")
    jobs = _jobs(out)
    assert jobs == _expected(SEEDS)
    assert len([j for j in jobs if j[0] == "train"]) == 3 * 16 and len(jobs) == 48 + 32 + 2 + 2 + 6 + 2
    # The commands: fractions only where the fraction is below 1, features only for the probes, the chain's
    # checkpoint of the run's size, today's tables from the first cell of each dataset.
    assert "--fractions 0.1,1 --seed" in out
    probe = "res/runs/random/chexpert/48px/linear_probe/frac-0.1/seed-1"
    line = next(ln for ln in out.splitlines() if f"--out {probe} " in ln)
    assert "--fractions res/chexpert/fractions.parquet" in line and "--features-dir res/features/random/chexpert/48px" in line
    full = next(ln for ln in out.splitlines() if "--out res/runs/mimic_sl/chexpert/32px/finetune/frac-1/seed-0 " in ln)
    assert "--fractions" not in full and "--features-dir" not in full
    assert "--init-checkpoint res/pretrain/mimic_sl/mimic/32px/all-labels/best.pt" in full
    assert "--cache-dir res/chexpert/cache/paper-32" in full
    assert "--stats chexpert=res/stats/chexpert/32px/finetune/frac-0.1/seed-0" in out
    assert "--cell chexpert/48px/linear_probe/frac-1/seed-1=res/stats/chexpert/48px/linear_probe/frac-1/seed-1" in out


def _job_texts(output: str) -> dict[tuple[str, tuple], str]:
    """Each planned job's inputs, outputs, log, wildcards, resources and shell command (all but jobid and reason)."""
    texts: dict[tuple[str, tuple], str] = {}
    for block in output.split("\n\n"):
        lines = [ln for ln in block.splitlines() if not ln.startswith(("[", "    jobid:", "    reason:"))]
        jobs = planned_jobs("\n".join(lines))
        if len(jobs) == 1:
            texts[_job(jobs[0][0], **jobs[0][1])] = "\n".join(lines).strip()
    return texts


def _complete(work: Path, dry_run_output: str) -> None:
    """Create every output a dry run lists, each stage newer than the one before (a finished workspace)."""
    order = ["fractions", "pretrain", "features", "train", "evaluate", "aggregate", "grid"]
    outputs: dict[str, list[str]] = {}
    rule = None
    for line in dry_run_output.splitlines():
        if line.startswith("rule "):
            rule = line.removeprefix("rule ").rstrip(":")
        elif line.startswith("    output: ") and rule in order:
            outputs.setdefault(rule, []).extend(p.strip() for p in line.removeprefix("    output: ").split(","))
    stamp = time.time()
    for level, name in enumerate(order, start=1):
        for rel in outputs.get(name, []):
            path = work / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            os.utime(path, (stamp + level, stamp + level))


def test_adding_a_seed_adds_only_its_runs_and_the_grid_aggregate(tmp_path: Path) -> None:
    work = _workflow(tmp_path, grid_config())
    before = _snakemake(work, "-n", "-p")
    _complete(work, before)
    _snakemake(work, "--touch")  # records each job's metadata (params, inputs) as a real run would
    assert _jobs(_snakemake(work, "-n")) == set(), "the finished workspace is not up to date"
    more = grid_config()
    more["grid"]["seeds"] = [*SEEDS, 2]
    (work / "config.yaml").write_text(yaml.safe_dump(more, sort_keys=False))
    # Params and inputs: every job of the smaller grid has the same command, inputs and outputs in the larger one,
    # so Snakemake's params and input triggers cannot fire (a dry run of a --touch'ed workspace sees mtimes only).
    texts, after = _job_texts(before), _job_texts(_snakemake(work, "-n", "-p", "-F"))
    assert set(texts) == _expected(SEEDS)
    changed = sorted(job for job, text in texts.items() if job[0] != "grid" and after.get(job) != text)
    assert changed == [], changed[:3]
    jobs = _jobs(_snakemake(work, "-n"))
    # Only the new seed's runs and cells, and the grid job over every cell; the primary cells (seed 0) are
    # unchanged, so today's tables are not rebuilt, and nothing existing reruns (no params, input or mtime change).
    assert jobs == (_expected([*SEEDS, 2]) - _expected(SEEDS)) | {_job("grid")}
    assert {rule for rule, _ in jobs} == {"train", "evaluate", "grid"} and len(jobs) == 3 * 8 + 2 * 8 + 1


def test_primary_cell_is_the_first_value_of_each_axis(tmp_path: Path) -> None:
    """Today's tables come from the first value of each axis in config order (the aggregate's --stats)."""
    cfg = grid_config()
    for axis in ("sizes", "regimes"):
        cfg["grid"][axis] = list(reversed(cfg["grid"][axis]))
    out = _snakemake(_workflow(tmp_path, cfg), "-n", "-p")
    assert "--stats chexpert=res/stats/chexpert/48px/linear_probe/frac-0.1/seed-0 " in out
    assert "--stats mimic=res/stats/mimic/48px/linear_probe/frac-0.1/seed-0 " in out
