"""The compute plan of a validated config: every job's device-hours and memory, per-dataset CPU-hours and disk.

Jobs (one :class:`PlanJob` each):

* ``train``    -- one per :class:`~cxrbench.runkey.RunKey`: ``epochs x (train images x step cost + one validation
  pass)`` plus one final prediction pass over validation and test. A ``linear_probe`` run trains on features
  extracted once, so it costs only its start-up.
* ``pretrain`` -- supervised pre-training of a ``pipeline`` initialisation, once per size (per target for
  ``transfer: study``), with its ``pretrain_training`` epochs and patience.
* ``features`` -- one forward pass over all images of a dataset per (initialisation, dataset, size) when the grid
  has ``linear_probe``.
* ``external`` -- one forward pass over dataset B's test split per (run, B) when ``evaluation.external`` is true.

Early stopping: with ``patience`` p > 0 the best validation epoch is assumed at
:data:`EXPECTED_BEST_EPOCH_FRACTION` of the maximum epochs E, so a run is expected to stop after
``min(E, ceil(0.1 E) + p)`` epochs; the maximum (all E epochs) sizes the SLURM runtime.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cxrbench.paths import Layout
from cxrbench.plan.model import (
    GpuSpec,
    ModelShape,
    gpu_spec,
    model_shape,
    peak_memory_bytes,
    step_passes,
    sustained_flops,
)
from cxrbench.runkey import RunKey, grid_axes, grid_runs

_logger = logging.getLogger(__name__)

__all__ = [
    "DatasetCost",
    "ImageCounts",
    "Plan",
    "PlanJob",
    "build_plan",
    "dataset_images",
    "expected_epochs",
    "plan_summary",
    "planned_features_resources",
    "planned_pretrain_resources",
    "planned_resources",
    "resource_table",
    "start_summary",
]

# The workflow rules whose jobs the plan sizes (workflow/rules/train.smk): their resources come from it.
PLANNED_RULES = frozenset({"train", "pretrain", "features"})
# The study hand-picked epochs 5 and 6 of 100 (paper-methods.md section 5): fine-tuning a pretrained ViT at lr 1e-5
# peaks early. history.csv of finished runs shows the real best epoch.
EXPECTED_BEST_EPOCH_FRACTION = 0.1
# Per-job fixed cost: Python and torch/timm imports, model build, cache open, checkpoint and prediction writing.
# Measured on the 2-core development machine as the demo's train jobs' benchmark wall time minus their epochs
# (history.csv epoch_s): 7.4-9.1 s, median 8.5 s (results/logs/train/*/*.benchmark.tsv, 2026-12-01).
JOB_STARTUP_S = 8.5
# Host memory (SLURM mem_mb) of a training process: max_rss of the demo's CPU train jobs is 1,070-1,238 MB
# (benchmark.tsv); a CUDA process maps the CUDA libraries and context as well (~2 GB more, assumed); each
# data-loading worker adds its own interpreter and decode buffers (assumed 500 MB).
HOST_PROCESS_MB = {"cpu": 1300, "gpu": 3500}
HOST_WORKER_MB = 500
# PNG bytes per pixel of a preprocessed image: the demo's 1,804 PNGs at 32 px hold 1,812,211 B (0.98 B/px, header
# included). Histogram-equalised radiographs compress little, so this scales with size^2 (~49 KB at 224 px).
PNG_BYTES_PER_PIXEL = 0.98
# CPU seconds per source image of one preprocessing worker (paper mode, 512 px, PNG written; decode dominates, so
# smaller sizes cost about the same), by the adapter's source format. From `python bench/preprocess.py` on the
# development machine, 2026-12-01: uncompressed 12-bit DICOM 38.3 img/s, 8-bit PNG 41.5, 16-bit PNG 14.3,
# 8-bit JPEG 28.7 (JPEG 2000 DICOM: 12.1).
PREPROCESS_S_PER_IMAGE = {
    "vindr": 1 / 38.3,
    "uka": 1 / 38.3,
    "pedicxr": 1 / 38.3,
    "chestxray14": 1 / 41.5,
    "padchest": 1 / 14.3,
    "chexpert": 1 / 28.7,
    "mimic": 1 / 28.7,
    "generic_csv": 1 / 28.7,
}
# Images per adapter when no labels.parquet exists yet: (frontal images the study used, official test images or
# None). Totals from paper-methods.md section 2.1 (Pedi-CXR: datasets.md section 7); official tests from
# datasets.md (ChestX-ray14 test_list.txt, CheXpert's 500-study test set ~668 images, MIMIC-CXR-JPG `test`,
# VinDr-CXR test/, the UKA institutional split).
DEFAULT_IMAGES: dict[str, tuple[int, int | None]] = {
    "vindr": (18_000, 3_000),
    "chestxray14": (112_120, 25_596),
    "chexpert": (157_676, 668),
    "mimic": (213_921, 5_159),
    "uka": (193_361, 39_824),
    "padchest": (110_525, None),
    "pedicxr": (9_125, None),
}
# Adapters whose test split the `study` strategy replaces with its own (cxrbench.labels.splits.STUDY_OWN_SPLIT).
_STUDY_OWN_SPLIT = frozenset({"chexpert", "mimic", "padchest"})


@dataclass(frozen=True)
class ImageCounts:
    """Images per split of one dataset and where the numbers come from."""

    train: int
    val: int
    test: int
    source: str

    @property
    def total(self) -> int:
        return self.train + self.val + self.test


def _split_counts(total: int, test: int | None, config: dict[str, Any], source: str) -> ImageCounts:
    splits = config["splits"]
    test = round(total * splits["test_fraction"]) if test is None else test
    val = round((total - test) * splits["val_fraction"])
    return ImageCounts(train=total - test - val, val=val, test=test, source=source)


def dataset_images(config: dict[str, Any], dataset: str) -> ImageCounts:
    """Images per split: ``<results>/<ds>/labels.parquet`` when it exists, else the demo's or the adapter's defaults."""
    labels = Layout(config["results"]).labels(dataset)
    if labels.is_file():
        import pandas as pd

        try:
            counts = pd.read_parquet(labels, columns=["split"])["split"].value_counts()
        except (OSError, ValueError, KeyError) as exc:
            # The workflow plans while it builds the DAG, where a broken file is about to be rewritten: the
            # defaults below size the jobs instead of stopping the run.
            _logger.warning("%s is unreadable (%s); planning %s from defaults", labels, exc, dataset)
        else:
            return ImageCounts(*(int(counts.get(s, 0)) for s in ("train", "val", "test")), source="labels.parquet")
    adapter = config["datasets"][dataset]["adapter"]
    from cxrbench.config import is_demo_dataset

    if is_demo_dataset(config, dataset):
        n = config["demo"]["images_per_dataset"] * (2 if adapter == "mimic" else 1)
        return _split_counts(n, None, config, "demo.images_per_dataset (before the view filter)")
    if adapter not in DEFAULT_IMAGES:
        return ImageCounts(0, 0, 0, source=f"unknown: no default for adapter {adapter!r}; run `cxrbench harmonise`")
    total, official_test = DEFAULT_IMAGES[adapter]
    if config["splits"]["strategy"] == "study" and adapter in _STUDY_OWN_SPLIT:
        official_test = None
    return _split_counts(total, official_test, config, "the adapter's default (the study's size, paper-methods.md)")


def expected_epochs(epochs: int, patience: int) -> int:
    """Epochs a run is expected to train with early stopping (the module docstring states the assumption)."""
    if patience <= 0:
        return epochs
    return min(epochs, math.ceil(EXPECTED_BEST_EPOCH_FRACTION * epochs) + patience)


@dataclass(frozen=True)
class PlanJob:
    """One job of the plan. Hours are device-hours on the plan's device; ``fraction``/``seed`` are None where shared."""

    kind: str  # train | pretrain | features | external
    init: str
    dataset: str
    size: int
    regime: str | None
    fraction: float | None
    seed: int | None
    target: str | None  # pretrain: the target dataset (None: all labels); external: the test dataset
    images: int  # training images per epoch, or images of the forward pass
    epochs_max: int
    epochs_expected: int
    train_h_max: float  # training steps and per-epoch validation, all epochs
    train_h_expected: float  # the same, expected epochs
    inference_h: float  # final predictions, feature extraction or the external pass
    startup_h: float
    peak_mem_gib: float

    @property
    def device_h_max(self) -> float:
        return self.train_h_max + self.inference_h + self.startup_h

    @property
    def device_h_expected(self) -> float:
        return self.train_h_expected + self.inference_h + self.startup_h

    def axis(self, name: str) -> Any:
        """This job's value of a grid axis, or None where the job is shared by every value of it."""
        return {"init": self.init, "dataset": self.dataset, "size": self.size, "regime": self.regime,
                "fraction": self.fraction, "seed": self.seed}[name]

    def row(self) -> dict[str, Any]:
        """Flat dict for csv/json output (hours rounded to the second)."""
        out = asdict(self)
        out["device_h_max"], out["device_h_expected"] = self.device_h_max, self.device_h_expected
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in out.items()}


@dataclass(frozen=True)
class DatasetCost:
    """CPU-hours and disk of one dataset at one size."""

    dataset: str
    size: int
    images: ImageCounts
    preprocess_cpu_h: float
    png_gb: float
    cache_gb: float
    features_gb: float  # frozen features of every initialisation (linear_probe only)


@dataclass(frozen=True)
class Plan:
    """The whole plan of a config on one device."""

    gpu: GpuSpec
    precision: str
    mfu: float
    jobs: list[PlanJob]
    datasets: list[DatasetCost]
    axes: dict[str, list[Any]] = field(default_factory=dict)
    runs: dict[RunKey, PlanJob] = field(default_factory=dict)  # the train job of each run

    def total(self, jobs: Iterable[PlanJob] | None = None) -> dict[str, float]:
        """Sums over ``jobs`` (default all): device-hours (max, expected), training and inference parts, job count."""
        jobs = self.jobs if jobs is None else list(jobs)
        return {
            "jobs": len(jobs),
            "device_h_max": math.fsum(j.device_h_max for j in jobs),
            "device_h_expected": math.fsum(j.device_h_expected for j in jobs),
            "train_h_max": math.fsum(j.train_h_max for j in jobs),
            "train_h_expected": math.fsum(j.train_h_expected for j in jobs),
            "inference_h": math.fsum(j.inference_h for j in jobs),
        }

    def by_axis(self, name: str) -> dict[Any, dict[str, float]]:
        """Totals per value of one grid axis; jobs shared by all values (e.g. features over seeds) under None."""
        values = [*self.axes[name], None]
        groups = {v: [j for j in self.jobs if j.axis(name) == v] for v in values}
        return {v: self.total(js) for v, js in groups.items() if js}


@dataclass(frozen=True)
class _Context:
    gpu: GpuSpec
    precision: str
    mfu: float
    flops_per_s: float


def _device_name(config: dict[str, Any], gpu: str | None) -> str:
    """--gpu, else ``plan.gpu``, else ``cpu`` for CPU training (training.gpus 0 or device cpu), else A100 80GB."""
    if gpu:
        return gpu
    if config.get("plan", {}).get("gpu"):
        return config["plan"]["gpu"]
    training = config["training"]
    return "cpu" if training["gpus"] == 0 or training["device"] == "cpu" else "A100-80GB"


def _context(config: dict[str, Any], gpu: str | None) -> _Context:
    spec = gpu_spec(_device_name(config, gpu))
    # autocast applies on CUDA only (cxrbench.training.loop): a CPU job computes in fp32
    precision = "fp32" if spec.gpu.lower() == "cpu" else config["training"]["precision"]
    mfu = config.get("plan", {}).get("mfu") or spec.mfu
    return _Context(spec, precision, mfu, sustained_flops(spec, precision=precision, mfu=mfu))


def _training(config: dict[str, Any], init: str | None = None) -> dict[str, Any]:
    """The training section a job uses: a pipeline init's pre-training merges its ``pretrain_training``."""
    training = config["training"]
    if init is not None:
        training = {**training, **(config["initialisations"][init].get("pretrain_training") or {})}
    return training


def _hours(flops: float, ctx: _Context) -> float:
    return flops / ctx.flops_per_s / 3600.0


def _fit_job(
    config: dict[str, Any],
    ctx: _Context,
    *,
    kind: str,
    shape: ModelShape,
    counts: ImageCounts,
    train_images: int,
    regime: str,
    training: dict[str, Any],
    shared_regime: bool = False,
    **key: Any,
) -> PlanJob:
    """A train or pretrain job: epochs of steps plus a validation pass each, then val + test predictions."""
    grad_ckpt = bool(training.get("grad_checkpointing", False))
    f = shape.forward_flops
    epochs, exp_epochs = training["epochs"], expected_epochs(training["epochs"], training["patience"])
    if regime == "linear_probe":  # the probe trains on extracted features: seconds, not device-hours
        per_epoch, inference = 0.0, 0.0
    else:
        per_epoch = _hours(train_images * step_passes(regime, grad_checkpointing=grad_ckpt) * f + counts.val * f, ctx)
        inference = _hours((counts.val + counts.test) * f, ctx)
    mem = peak_memory_bytes(shape, regime=regime, batch_size=training["batch_size"], precision=ctx.precision,
                            grad_checkpointing=grad_ckpt)
    # pre-training serves every regime of its initialisation: its regime axis value is None ("shared")
    return PlanJob(kind=kind, regime=None if shared_regime else regime, images=train_images, epochs_max=epochs, epochs_expected=exp_epochs,
                   train_h_max=epochs * per_epoch, train_h_expected=exp_epochs * per_epoch, inference_h=inference,
                   startup_h=JOB_STARTUP_S / 3600, peak_mem_gib=mem / 2**30, **key)


def _forward_job(config: dict[str, Any], ctx: _Context, *, kind: str, shape: ModelShape, images: int,
                 **key: Any) -> PlanJob:
    """A forward-only job (feature extraction, external validation) over ``images``."""
    mem = peak_memory_bytes(shape, regime="linear_probe", batch_size=config["training"]["batch_size"],
                            precision=ctx.precision, grad_checkpointing=False)
    return PlanJob(kind=kind, images=images, epochs_max=0, epochs_expected=0, train_h_max=0.0, train_h_expected=0.0,
                   inference_h=_hours(images * shape.forward_flops, ctx), startup_h=JOB_STARTUP_S / 3600,
                   peak_mem_gib=mem / 2**30, **key)


def _shape_cache(config: dict[str, Any]) -> Path:
    """Counted shapes persist under ``results``: a later plan (the workflow's parse-time summary) imports no torch."""
    return Path(config["results"]) / ".cache" / "plan-model-shapes.json"


@functools.cache
def _versions() -> str:
    """The package versions a counted shape depends on (reading package metadata is slow: once per process)."""
    from importlib.metadata import version

    return f"torch {version('torch')} timm {version('timm')}"


# (cache file, shape key) -> shape: one plan asks for the same few (architecture, size) pairs thousands of times.
_SHAPES: dict[tuple[str, str], ModelShape] = {}


def _shape(config: dict[str, Any], init: str, size: int) -> ModelShape:
    from cxrbench.models.registry import init_spec

    arch = init_spec(config, init).architecture
    key = f"{arch}@{size} {_versions()}"
    path = _shape_cache(config)
    memo = (str(path), key)
    if memo in _SHAPES:
        return _SHAPES[memo]
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cached = {}
    if key in cached:
        shape = _SHAPES[memo] = ModelShape(**cached[key])
        return shape
    shape = _SHAPES[memo] = model_shape(arch, img_size=size)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**cached, key: asdict(shape)}, indent=1, sort_keys=True), encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:  # a read-only results folder only costs the recount next time
        _logger.debug("cannot cache model shapes in %s: %s", path, exc)
    return shape


def _train_job(config: dict[str, Any], ctx: _Context, key: RunKey, counts: ImageCounts) -> PlanJob:
    return _fit_job(config, ctx, kind="train", shape=_shape(config, key.init, key.size), counts=counts,
                    train_images=math.ceil(counts.train * key.fraction), regime=key.regime,
                    training=_training(config), init=key.init, dataset=key.dataset, size=key.size,
                    fraction=key.fraction, seed=key.seed, target=None)


def _pretrain_jobs(config: dict[str, Any], ctx: _Context, counts: dict[str, ImageCounts]) -> list[PlanJob]:
    from cxrbench.models.registry import init_spec
    from cxrbench.training.settings import pretrain_jobs

    jobs = []
    for init, target, size in pretrain_jobs(config):  # once per size (and target in `study` transfer)
        spec = init_spec(config, init)
        pds = spec.pretrain_dataset
        jobs.append(_fit_job(config, ctx, kind="pretrain", shape=_shape(config, spec.pretrain_init, size),
                             counts=counts[pds], train_images=counts[pds].train, regime="finetune",
                             training=_training(config, init), init=init, dataset=pds, size=size,
                             fraction=None, seed=None, target=target, shared_regime=True))
    return jobs


def _config_key(config: dict[str, Any]) -> str:
    """The cache key of a config's plan: its JSON and the working directory its relative paths are read from."""
    return json.dumps({"cwd": os.getcwd(), "config": config}, sort_keys=True, default=str)


def build_plan(config: dict[str, Any], *, gpu: str | None = None) -> Plan:
    """Every job of a validated config with its device-hours and memory, and every dataset's CPU-hours and disk.

    Args:
        config: a validated config (``cxrbench.config.validate_config``).
        gpu: a ``resources/gpus.csv`` name; default ``plan.gpu``, else ``cpu`` for CPU training, else A100-80GB.

    Raises:
        PlanError: unknown GPU (the message lists the known ones) or a precision the GPU lacks.
    """
    return _build_plan(_config_key(config), gpu)


@functools.lru_cache(maxsize=4)
def _build_plan(config_json: str, gpu: str | None) -> Plan:
    config = json.loads(config_json)["config"]
    ctx = _context(config, gpu)
    axes = grid_axes(config)
    counts = {ds: dataset_images(config, ds) for ds in config["datasets"]}
    runs = grid_runs(config)
    train = {key: _train_job(config, ctx, key, counts[key.dataset]) for key in runs}
    jobs = list(train.values())
    jobs += _pretrain_jobs(config, ctx, counts)
    if "linear_probe" in axes.regimes:
        for init, ds, size in dict.fromkeys((k.init, k.dataset, k.size) for k in runs if k.regime == "linear_probe"):
            jobs.append(_forward_job(config, ctx, kind="features", shape=_shape(config, init, size),
                                     images=counts[ds].total, init=init, dataset=ds, size=size,
                                     regime="linear_probe", fraction=None, seed=None, target=None))
    if config["evaluation"].get("external", False):
        for key in runs:
            for other in config["datasets"]:
                if other != key.dataset:
                    jobs.append(_forward_job(config, ctx, kind="external", shape=_shape(config, key.init, key.size),
                                             images=counts[other].test, init=key.init, dataset=key.dataset,
                                             size=key.size, regime=key.regime, fraction=key.fraction, seed=key.seed,
                                             target=other))
    probe_inits = {k.init for k in runs if k.regime == "linear_probe"}
    datasets = []
    for ds, c in counts.items():
        per_image_s = PREPROCESS_S_PER_IMAGE.get(config["datasets"][ds]["adapter"], PREPROCESS_S_PER_IMAGE["generic_csv"])
        for size in axes.sizes:
            features = sum(c.total * _shape(config, i, size).feature_dim * 4 for i in probe_inits)
            datasets.append(DatasetCost(
                dataset=ds, size=size, images=c, preprocess_cpu_h=c.total * per_image_s / 3600,
                png_gb=c.total * PNG_BYTES_PER_PIXEL * size * size / 1e9,
                cache_gb=c.total * size * size / 1e9 if config["preprocess"]["cache"] else 0.0,
                features_gb=features / 1e9,
            ))
    axis_values = {"init": list(config["initialisations"]), "dataset": list(config["datasets"]),
                   "size": list(axes.sizes), "regime": list(axes.regimes), "fraction": list(axes.label_fractions),
                   "seed": list(axes.seeds)}
    return Plan(gpu=ctx.gpu, precision=ctx.precision, mfu=ctx.mfu, jobs=jobs, datasets=datasets, axes=axis_values,
                runs=train)


def _resources(config: dict[str, Any], job: PlanJob) -> dict[str, int]:
    plan_cfg = config.get("plan", {})
    safety = plan_cfg.get("safety_factor", 1.5)
    minutes = math.ceil(job.device_h_max * 60 * safety)
    runtime = max(plan_cfg.get("min_runtime_minutes", 10), min(minutes, plan_cfg.get("partition_limit_minutes", 2880)))
    training = config["training"]
    on_cpu = training["gpus"] == 0 or training["device"] == "cpu"
    host_mb = HOST_PROCESS_MB["cpu" if on_cpu else "gpu"] + HOST_WORKER_MB * training["num_workers"]
    if on_cpu:  # the model, its optimiser state and activations live in host memory
        host_mb += job.peak_mem_gib * 1024
    return {"runtime": int(runtime), "mem_mb": int(math.ceil(host_mb * safety / 100) * 100)}


def resource_table(config: dict[str, Any]) -> dict[tuple[Any, ...], dict[str, int]]:
    """SLURM ``runtime`` and ``mem_mb`` of every train, pretrain and features job of the config's plan.

    Keyed as the workflow's rules name their jobs: ``("train", RunKey)``, ``("pretrain", init, target, size)``
    (target None: all labels) and ``("features", init, dataset, size)``. Computed once per config (with its plan),
    so a workflow with thousands of jobs looks each one up instead of planning it.
    """
    return _resource_table(_config_key(config))


@functools.lru_cache(maxsize=4)
def _resource_table(config_json: str) -> dict[tuple[Any, ...], dict[str, int]]:
    config = json.loads(config_json)["config"]
    plan = _build_plan(config_json, None)
    table: dict[tuple[Any, ...], dict[str, int]] = {("train", key): _resources(config, job)
                                                    for key, job in plan.runs.items()}
    for job in plan.jobs:
        if job.kind == "pretrain":
            table["pretrain", job.init, job.target, job.size] = _resources(config, job)
        elif job.kind == "features":
            table["features", job.init, job.dataset, job.size] = _resources(config, job)
    return table


def planned_resources(config: dict[str, Any], key: RunKey) -> dict[str, int]:
    """SLURM resources of one training run: ``runtime`` (minutes: the maximum estimate x ``plan.safety_factor``,
    capped by ``plan.partition_limit_minutes``, at least ``plan.min_runtime_minutes``; a capped job resumes from its
    checkpoint on retry) and ``mem_mb`` (host memory x the safety factor)."""
    res = resource_table(config).get(("train", key))
    if res is None:
        raise ValueError(f"run {key} is not in this config's grid")
    return res


def planned_pretrain_resources(config: dict[str, Any], *, init: str, target: str | None, size: int) -> dict[str, int]:
    """SLURM resources of one supervised pre-training job (as :func:`planned_resources`)."""
    res = resource_table(config).get(("pretrain", init, target, size))
    if res is None:
        raise ValueError(f"no pre-training job ({init!r}, target {target!r}, {size} px) in this config")
    return res


def planned_features_resources(config: dict[str, Any], *, init: str, dataset: str, size: int) -> dict[str, int]:
    """SLURM resources of one frozen-feature extraction job (as :func:`planned_resources`)."""
    res = resource_table(config).get(("features", init, dataset, size))
    if res is None:
        raise ValueError(f"no features job ({init!r}, {dataset!r}, {size} px) in this config")
    return res


def plan_summary(config: dict[str, Any]) -> str:
    """The one-screen plan the workflow prints as it starts (empty when ``plan.summary`` is false)."""
    if not config.get("plan", {}).get("summary", True):
        return ""
    from cxrbench.plan.render import render_table

    return render_table(build_plan(config), jobs=False)


def start_summary(config: dict[str, Any], dag: Any) -> str:
    """What the workflow's ``onstart`` prints: :func:`plan_summary` when Snakemake's ``dag`` has a planned job
    (a rule in :data:`PLANNED_RULES`) to run, else nothing.

    With such a job pending the plan is built here even when the summary is off: ``onstart`` runs before the first
    job, so every job's resources come from one plan of what was on disk then (a later job writing
    ``labels.parquet`` does not change the image counts of its siblings' plan).
    """
    if not any(job.rule.name in PLANNED_RULES for job in dag.needrun_jobs()):
        return ""
    resource_table(config)
    return plan_summary(config)
