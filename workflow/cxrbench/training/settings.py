"""Training settings: presets, seeds, the run grid and the ``--settings`` JSON of each training job.

The rules in ``workflow/rules/train.smk`` call :func:`run_settings` / :func:`pretrain_settings`, so the JSON a job
receives holds exactly the values that determine its result (device and worker count do not: augmentation and
shuffling are seeded per sample and per epoch, independent of either).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from cxrbench.config import RUNTIME_TRAINING_KEYS, ConfigError
from cxrbench.models.registry import InitSpec, init_spec, is_pipeline_self_run
from cxrbench.paths import Layout

__all__ = [
    "PRESETS",
    "derive_seed",
    "pretrain_jobs",
    "pretrain_run_dir",
    "pretrain_settings",
    "pretrain_target",
    "regime_training",
    "resolve_training",
    "run_settings",
    "train_runs",
]

# Keys a preset fills when the config leaves them out (the schema gives them no default for this reason).
PRESETS: dict[str, dict[str, Any]] = {
    # The study: inputs in [0, 1], constant learning rate (paper-methods.md §3, §5).
    "paper": {"normalisation": "none", "schedule": "none", "warmup_epochs": 0},
    # The backbone's own mean/std from timm and a cosine schedule after one linear warm-up epoch.
    "modern": {"normalisation": "model", "schedule": "cosine", "warmup_epochs": 1},
}


def resolve_training(training: dict[str, Any]) -> dict[str, Any]:
    """The validated ``training`` section with the preset's values filled in and runtime-only keys removed."""
    preset = training.get("preset", "paper")
    if preset not in PRESETS:
        raise ConfigError(f"config key 'training.preset': unknown preset {preset!r} (have: {', '.join(PRESETS)})")
    out = {**PRESETS[preset], **{k: v for k, v in training.items() if k not in RUNTIME_TRAINING_KEYS}}
    return dict(sorted(out.items()))


def derive_seed(master: int, *parts: str) -> int:
    """A 31-bit seed from the master seed and names (stage, dataset ...), stable across Python versions."""
    text = "/".join([str(master), *parts])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


def train_runs(config: dict[str, Any]) -> list[tuple[str, str]]:
    """Every fine-tuning run (init, dataset), skipping a ``pipeline`` init on its own pre-training dataset."""
    runs = []
    for init in config["initialisations"]:
        spec = init_spec(config, init)
        for ds in config["datasets"]:
            if not is_pipeline_self_run(spec, ds):
                runs.append((init, ds))
    return runs


def _img_size(spec: InitSpec, config: dict[str, Any]) -> int:
    return int(spec.img_size or config["preprocess"]["size"])


def pretrain_target(spec: InitSpec, dataset: str) -> str | None:
    """The target a ``pipeline`` init pre-trains for: the dataset in ``study`` mode, None (all labels) otherwise
    (``backbone`` and ``shared_head`` pre-train once on every label of the pre-training dataset)."""
    return dataset if spec.transfer == "study" else None


def pretrain_run_dir(layout: Layout, spec: InitSpec, target: str | None) -> Path:
    """``<results>/pretrain/<init>/<pretrain ds>/{all-labels | for-<target>}``.

    ``study`` transfer pre-trains once per target on the labels it shares with the pre-training dataset;
    ``backbone`` and ``shared_head`` transfer pre-train once on the full label set.
    """
    return layout.pretrain_run_dir(spec.name, spec.pretrain_dataset, target)


def _common(config: dict[str, Any]) -> dict[str, Any]:
    return {
        "training": resolve_training(config["training"]),
        "hf_home": config["weights"]["hf_home"],
        "variant": Layout.variant(config["preprocess"]["mode"], config["preprocess"]["size"]),
    }


def run_settings(config: dict[str, Any], init: str, dataset: str) -> dict[str, Any]:
    """The ``--settings`` object of the fine-tuning run (init, dataset)."""
    spec = init_spec(config, init)
    if is_pipeline_self_run(spec, dataset):
        raise ConfigError(
            f"initialisation {init!r} is pre-trained on {dataset!r}: that run is not a separate arm (it is the "
            f"{spec.pretrain_init!r} run) and is skipped"
        )
    return {
        "role": "finetune",
        "arm": init,
        "dataset": dataset,
        "init": spec.to_dict(),
        "img_size": _img_size(spec, config),
        "label_scope": "overlap" if spec.transfer in ("study", "shared_head") else "all",
        "seed": derive_seed(config["seed"], "train", dataset),
        **_common(config),
    }


def pretrain_jobs(config: dict[str, Any]) -> list[tuple[str, str | None]]:
    """Every pre-training job (pipeline init, target or None), each once."""
    jobs: list[tuple[str, str | None]] = []
    for init, ds in train_runs(config):
        spec = init_spec(config, init)
        if spec.source == "pipeline":
            job = (init, pretrain_target(spec, ds))
            if job not in jobs:
                jobs.append(job)
    return jobs


def pretrain_settings(config: dict[str, Any], init: str, target: str | None) -> dict[str, Any]:
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
        "img_size": _img_size(base, config),
        "label_scope": "all" if target is None else "overlap",
        "seed": derive_seed(config["seed"], "pretrain", spec.pretrain_dataset, target or "all-labels"),
        **_common(config),
        # The pre-training recipe may differ from the fine-tuning one (initialisations.<name>.pretrain_training).
        "training": resolve_training({**config["training"], **config["initialisations"][init]["pretrain_training"]}),
    }


# `training` keys that configure the regimes themselves: they enter a run's settings only where they apply.
_REGIME_KEYS = ("regimes", "lora")


def regime_training(training: dict[str, Any], regime: str) -> dict[str, Any]:
    """The ``training`` settings of one run of ``regime``, from :func:`resolve_training`'s output.

    ``finetune`` gets ``training`` without the regime sections, so its settings (and results) are those of a
    config without them; ``linear_probe`` and ``lora`` get their ``training.regimes.<regime>`` overrides. A
    probe trains on features computed once, so its ``hflip``/``rotation`` are 0 (no augmentation, recorded as
    such); ``lora`` carries ``training.lora`` (rank, alpha, dropout, target_modules).

    Raises:
        ConfigError: an unknown regime.
    """
    from cxrbench.runkey import REGIMES

    if regime not in REGIMES:
        raise ConfigError(f"unknown training regime {regime!r} (have: {', '.join(REGIMES)})")
    out = {k: v for k, v in training.items() if k not in _REGIME_KEYS}
    if regime == "finetune":
        return out
    out.update((training.get("regimes") or {}).get(regime) or {})
    if regime == "linear_probe":
        out.update(hflip=0.0, rotation=0.0)
    else:
        out["lora"] = dict(training.get("lora") or {})
    return dict(sorted(out.items()))
