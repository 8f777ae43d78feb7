"""Training settings: presets, seeds, the jobs of the grid and the ``--settings`` JSON of each training job.

The rules in ``workflow/rules/train.smk`` call :func:`run_settings` / :func:`pretrain_settings` /
:func:`features_settings`, so the JSON a job receives holds exactly the values that determine its result (device,
worker count and gradient checkpointing do not: augmentation and shuffling are seeded per sample and per epoch,
independent of either). Runs are named by :class:`cxrbench.runkey.RunKey` (:func:`cxrbench.runkey.grid_runs`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, NamedTuple

from cxrbench.config import RUNTIME_TRAINING_KEYS, ConfigError
from cxrbench.models.registry import InitSpec, init_spec, is_pipeline_self_run
from cxrbench.paths import Layout
from cxrbench.runkey import DEFAULT_REGIME, DEFAULT_SEED, REGIMES, RunKey, grid_runs

__all__ = [
    "PRESETS",
    "REGIME_TRAINING_KEYS",
    "FeaturesJob",
    "PretrainJob",
    "derive_seed",
    "features_jobs",
    "features_settings",
    "pretrain_jobs",
    "pretrain_run_dir",
    "pretrain_settings",
    "pretrain_target",
    "replicate_seed",
    "resolve_training",
    "run_settings",
]

# Keys a preset fills when the config leaves them out (the schema gives them no default for this reason).
PRESETS: dict[str, dict[str, Any]] = {
    # The study: inputs in [0, 1], constant learning rate (paper-methods.md §3, §5).
    "paper": {"normalisation": "none", "schedule": "none", "warmup_epochs": 0},
    # The backbone's own mean/std from timm and a cosine schedule after one linear warm-up epoch.
    "modern": {"normalisation": "model", "schedule": "cosine", "warmup_epochs": 1},
}

# `training` keys that configure regimes: `regimes.<regime>` holds a regime's overrides (merged in, never passed
# on), `lora` the adapters of the lora regime. A run sees only its own regime's keys, so changing one regime's
# settings reruns that regime's runs only.
REGIME_TRAINING_KEYS: dict[str, str | None] = {"regimes": None, "lora": "lora"}

# The `training` keys `cxrbench features` uses (the backbone's forward pass and its batch), so a probe's lr or epochs
# never recompute the features.
FEATURE_TRAINING_KEYS = ("batch_size", "deterministic", "normalisation", "precision")


def resolve_training(training: dict[str, Any], *, regime: str = DEFAULT_REGIME) -> dict[str, Any]:
    """The validated ``training`` section for one regime: its ``regimes.<regime>`` overrides merged in, the preset's
    values filled in, runtime-only keys and other regimes' keys removed (``lora`` stays for the lora regime only;
    a linear probe gets ``hflip``/``rotation`` 0: its features are computed once, unaugmented).

    Raises:
        ConfigError: an unknown preset or regime.
    """
    if regime not in REGIMES:
        raise ConfigError(f"unknown training regime {regime!r} (have: {', '.join(REGIMES)})")
    merged = {**training, **((training.get("regimes") or {}).get(regime) or {})}
    if regime == "linear_probe":
        # The probe trains on features computed once per (init, dataset, size), without augmentation: record it.
        merged.update(hflip=0.0, rotation=0.0)
    preset = merged.get("preset", "paper")
    if preset not in PRESETS:
        raise ConfigError(f"config key 'training.preset': unknown preset {preset!r} (have: {', '.join(PRESETS)})")
    drop = set(RUNTIME_TRAINING_KEYS) | {k for k, owner in REGIME_TRAINING_KEYS.items() if owner != regime}
    out = {**PRESETS[preset], **{k: v for k, v in merged.items() if k not in drop}}
    return dict(sorted(out.items()))


def derive_seed(master: int, *parts: str) -> int:
    """A 31-bit seed from the master seed and names (stage, dataset ...), stable across Python versions."""
    text = "/".join([str(master), *parts])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


def replicate_seed(master: int, dataset: str, replicate: int) -> int:
    """The training seed of replicate ``replicate`` on ``dataset``: head initialisation, data order, augmentation.

    Replicate 0 keeps the seed of a run without a grid; every other replicate derives its own. The seed is the
    same for every initialisation, size, regime and label fraction, so runs compared in a cell share it.
    """
    if replicate == DEFAULT_SEED:
        return derive_seed(master, "train", dataset)
    return derive_seed(master, "train", dataset, f"replicate-{replicate}")


def _img_size(spec: InitSpec, size: int) -> int:
    """The model's input size: the initialisation's own ``img_size`` (one grid size only), else the run's size."""
    return int(spec.img_size or size)


def pretrain_target(spec: InitSpec, dataset: str) -> str | None:
    """The target a ``pipeline`` init pre-trains for: the dataset in ``study`` mode, None (all labels) otherwise
    (``backbone`` and ``shared_head`` pre-train once on every label of the pre-training dataset)."""
    return dataset if spec.transfer == "study" else None


def pretrain_run_dir(layout: Layout, spec: InitSpec, target: str | None, size: int | str) -> Path:
    """``<results>/pretrain/<init>/<pretrain ds>/<size>px/{all-labels | for-<target>}``.

    ``study`` transfer pre-trains once per target on the labels it shares with the pre-training dataset;
    ``backbone`` and ``shared_head`` transfer pre-train once on the full label set; either once per grid size.
    """
    return layout.pretrain_run_dir(spec.name, spec.pretrain_dataset, size, Layout.pretrain_scope(target))


def _common(config: dict[str, Any], size: int) -> dict[str, Any]:
    return {
        "hf_home": config["weights"]["hf_home"],
        "variant": Layout.variant(config["preprocess"]["mode"], size),
    }


def run_settings(config: dict[str, Any], key: RunKey) -> dict[str, Any]:
    """The ``--settings`` object of the training run ``key``."""
    spec = init_spec(config, key.init)
    if is_pipeline_self_run(spec, key.dataset):
        raise ConfigError(
            f"initialisation {key.init!r} is pre-trained on {key.dataset!r}: that run is not a separate arm (it is "
            f"the {spec.pretrain_init!r} run) and is skipped"
        )
    return {
        "role": "finetune",
        "arm": key.init,
        "dataset": key.dataset,
        "init": spec.to_dict(),
        "img_size": _img_size(spec, key.size),
        "label_scope": "overlap" if spec.transfer in ("study", "shared_head") else "all",
        "regime": key.regime,
        "label_fraction": float(key.fraction),
        "replicate": key.seed,
        "seed": replicate_seed(config["seed"], key.dataset, key.seed),
        "training": resolve_training(config["training"], regime=key.regime),
        **_common(config, key.size),
    }


class PretrainJob(NamedTuple):
    """One supervised pre-training of a ``pipeline`` initialisation: per target (or all labels) and size."""

    init: str
    target: str | None
    size: int


def pretrain_jobs(config: dict[str, Any]) -> list[PretrainJob]:
    """Every pre-training job, each once, in run order (not per seed, fraction or regime)."""
    jobs: dict[PretrainJob, None] = {}
    for key in grid_runs(config):
        spec = init_spec(config, key.init)
        if spec.source == "pipeline":
            jobs[PretrainJob(key.init, pretrain_target(spec, key.dataset), key.size)] = None
    return list(jobs)


def pretrain_settings(config: dict[str, Any], init: str, target: str | None, size: int) -> dict[str, Any]:
    """The ``--settings`` object of the supervised pre-training of pipeline init ``init`` (for ``target``)."""
    spec = init_spec(config, init)
    if spec.source != "pipeline":
        raise ConfigError(f"initialisation {init!r} has source {spec.source!r}, not 'pipeline': nothing to pre-train")
    base = init_spec(config, spec.pretrain_init)
    return {
        "role": "pretrain",
        "arm": init,
        "dataset": spec.pretrain_dataset,
        "target": target,
        "init": base.to_dict(),
        "img_size": _img_size(base, size),
        "label_scope": "all" if target is None else "overlap",
        "seed": derive_seed(config["seed"], "pretrain", spec.pretrain_dataset, target or "all-labels"),
        **_common(config, size),
        # The pre-training recipe may differ from the fine-tuning one (initialisations.<name>.pretrain_training).
        "training": resolve_training({**config["training"], **config["initialisations"][init]["pretrain_training"]}),
    }


class FeaturesJob(NamedTuple):
    """Frozen backbone features of one initialisation on one dataset at one size (the linear probe's input)."""

    init: str
    dataset: str
    size: int


def features_jobs(config: dict[str, Any]) -> list[FeaturesJob]:
    """Every features job: one per (init, dataset, size) with a ``linear_probe`` run, in run order."""
    jobs = {FeaturesJob(k.init, k.dataset, k.size): None for k in grid_runs(config) if k.regime == "linear_probe"}
    return list(jobs)


def features_settings(config: dict[str, Any], init: str, dataset: str, size: int) -> dict[str, Any]:
    """The ``--settings`` object of ``cxrbench features``: the settings of the dataset's replicate-0 linear probe on
    all labels without the keys that vary between probes (``replicate``, ``label_fraction``), and with only the
    ``training`` keys of the forward pass. ``seed`` stays: a random backbone is built from it (every probe of the
    features reuses that backbone)."""
    probe = run_settings(config, RunKey(init, dataset, size, "linear_probe"))
    for name in ("replicate", "label_fraction"):
        del probe[name]
    probe["role"] = "features"
    probe["training"] = {k: probe["training"][k] for k in FEATURE_TRAINING_KEYS if k in probe["training"]}
    return probe
