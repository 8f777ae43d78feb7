"""Stale-only reruns of the demo workflow: after a finished run, each change reruns exactly what it must.

One finished demo workspace is shared by the module (computed, or copied from $CXRBENCH_DEMO_WORKDIR,
see tests/slurm/demo_run.py). Configuration changes are checked with dry runs against copies of the
config; file changes are made for real, rerun for real (the executed jobs must equal the dry run's),
and undone afterwards, so every scenario starts from the finished state.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent / "slurm"))
from cxrbench.config import load_config
from cxrbench.datasets import label_files
from cxrbench.paths import Layout
from demo_run import completed_demo, planned_jobs, snakemake

pytestmark = pytest.mark.slow

DS = "uka"  # the dataset whose files are changed (it is not the MIMIC pre-training dataset)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield completed_demo(tmp_path_factory.mktemp("reruns") / "work")


def _config(work: Path) -> dict:
    cwd = Path.cwd()
    os.chdir(work)  # dataset roots are relative to the working directory
    try:
        return load_config(work / "config.yaml")
    finally:
        os.chdir(cwd)


def _runs(config: dict) -> set[tuple[str, str]]:
    from cxrbench.runkey import grid_runs

    return {(key.init, key.dataset) for key in grid_runs(config)}


def _cell(config: dict) -> dict[str, str]:
    """The wildcards of the demo's one grid cell per dataset (size, regime, fraction, seed)."""
    return {"size": str(config["preprocess"]["size"]), "regime": "finetune", "fraction": "1", "seed": "0"}


def _dry(work: Path, *args: str) -> list[tuple[str, dict[str, str]]]:
    out = snakemake(work, "-n", "--cores", "1", *args)
    return planned_jobs(out.stdout + out.stderr)


def _keys(jobs: list[tuple[str, dict[str, str]]]) -> set[tuple[str, tuple]]:
    return {(rule, tuple(sorted(wc.items()))) for rule, wc in jobs}


def _job(rule: str, **wildcards: str) -> tuple[str, tuple]:
    return rule, tuple(sorted(wildcards.items()))


def _assert_noop(work: Path) -> None:
    res = snakemake(work, "-n", "--cores", "1")
    assert planned_jobs(res.stdout + res.stderr) == [], res.stdout[-3000:]


def test_noop_rerun_runs_nothing(demo: Path) -> None:
    _assert_noop(demo)
    res = snakemake(demo, "--cores", "1")
    assert "Nothing to be done" in res.stdout + res.stderr
    assert planned_jobs(res.stdout + res.stderr) == []


def test_training_hyperparameter_reruns_training_and_downstream_only(demo: Path) -> None:
    raw = yaml.safe_load((demo / "config.yaml").read_text())
    raw["training"]["lr"] = raw["training"]["lr"] * 0.5
    (demo / "config.lr.yaml").write_text(yaml.safe_dump(raw))
    jobs = _dry(demo, "--configfile", str(demo / "config.lr.yaml"))
    rules = {rule for rule, _ in jobs}
    assert rules <= {"pretrain", "train", "evaluate", "aggregate"}, rules
    config = _config(demo)
    trained = {(wc["init"], wc["ds"]) for rule, wc in jobs if rule == "train"}
    assert trained == _runs(config)
    assert {"evaluate", "aggregate"} <= rules


def test_adding_an_initialisation_adds_only_its_runs_and_the_aggregates(demo: Path) -> None:
    raw = yaml.safe_load((demo / "config.yaml").read_text())
    raw["initialisations"]["random_b"] = {"model": "vit_tiny_patch16_224", "source": "none"}
    (demo / "config.init.yaml").write_text(yaml.safe_dump(raw))
    jobs = _dry(demo, "--configfile", str(demo / "config.init.yaml"))
    config = _config(demo)
    datasets = sorted({ds for _, ds in _runs(config)})
    cell = _cell(config)
    expected = {_job("train", init="random_b", ds=ds, **cell) for ds in datasets}
    expected |= {_job("evaluate", ds=ds, **cell) for ds in datasets} | {_job("aggregate")}
    assert _keys(jobs) == expected


def _restore_after(paths: list[Path]) -> Iterator[None]:
    saved = {p: (p.read_bytes(), p.stat().st_atime_ns, p.stat().st_mtime_ns) for p in paths}
    yield
    for p, (data, atime, mtime) in saved.items():
        p.write_bytes(data)
        os.utime(p, ns=(atime, mtime))


def test_touching_one_source_image_reruns_its_shard_and_what_depends_on_it(demo: Path) -> None:
    config = _config(demo)
    layout = Layout(demo / config["results"])
    variant = Layout.variant(config["preprocess"]["mode"], config["preprocess"]["size"])
    plan = pd.read_parquet(layout.shard_plan(DS, variant))
    row = plan.iloc[len(plan) // 2]
    image = demo / config["datasets"][DS]["root"] / row["source_path"]
    os.utime(image)  # touch: content unchanged, newer mtime
    jobs = _dry(demo)
    inits = sorted(i for i, d in _runs(config) if d == DS)
    cell = _cell(config)
    expected = {
        _job("preprocess_shard", ds=DS, size=cell["size"], shard=str(row["shard"])),
        _job("collect_shards", ds=DS, size=cell["size"]),
        _job("cache", ds=DS, size=cell["size"]),
        *(_job("train", init=i, ds=DS, **cell) for i in inits),
        _job("evaluate", ds=DS, **cell),
        _job("aggregate"),
    }
    assert _keys(jobs) == expected
    ran = snakemake(demo, "--cores", "2")
    assert _keys(planned_jobs(ran.stdout + ran.stderr)) == expected
    _assert_noop(demo)


def _of_dataset(wildcards: dict, ds: str) -> bool:
    """Whether a job belongs to dataset ``ds``'s chain: its own jobs, and with `transfer: study` the
    pre-training on the labels ``ds`` shares with the pre-training set (scope ``for-<ds>``)."""
    if "scope" in wildcards:
        return wildcards["scope"] == f"for-{ds}"
    return wildcards.get("ds", ds) == ds and wildcards.get("pds", ds) == ds


def test_editing_one_label_file_reruns_that_datasets_chain_only(demo: Path) -> None:
    config = _config(demo)
    entry = config["datasets"][DS]
    (label_file,) = [demo / p for p in label_files(entry["adapter"], Path(entry["root"]), entry)]
    restore = _restore_after([label_file])
    next(restore)
    try:
        df = pd.read_csv(label_file)
        graded = [
            c
            for c in df.columns
            if c not in {"image_id", "split", "subset", "subject_id", "age", "patient_sex", "healthy"}
        ]
        col = graded[0]
        df.loc[0, col] = 1 if df.loc[0, col] in (3, 4) else 4  # one finding of one image flips
        df.to_csv(label_file, index=False)
        jobs = _dry(demo)
        assert jobs, "editing a label file must rerun something"
        other = [(rule, wc) for rule, wc in jobs if not _of_dataset(wc, DS)]
        assert other == [], f"jobs of other datasets rerun: {other}"
        assert {"index", "harmonise", "shard_plan"} <= {rule for rule, _ in jobs}
        ran = snakemake(demo, "--cores", "2")
        executed = planned_jobs(ran.stdout + ran.stderr)
        assert all(_of_dataset(wc, DS) for _, wc in executed), executed
        # The image set did not change, so the shard plan kept every membership: no shard reruns.
        assert "preprocess_shard" not in {rule for rule, _ in executed}
        _assert_noop(demo)
    finally:
        next(restore, None)
