"""Configuration loading and validation against ``workflow/schemas/config.schema.yaml``.

The Snakefile and the command line use the same function, so a config that Snakemake accepts is the
config every stage sees, defaults included.
"""

from __future__ import annotations

import copy
import logging
import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

_logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
RESOURCES = REPO_ROOT / "resources"

__all__ = [
    "REPO_ROOT",
    "RESOURCES",
    "ConfigError",
    "is_demo_dataset",
    "load_config",
    "load_schema",
    "patch_size",
    "validate_config",
]


# `training` keys that say where and how a job runs, not what it computes: they never enter a stage's settings,
# so changing them reruns nothing.
# Gradient checkpointing recomputes activations in the backward pass: memory, not numbers.
RUNTIME_TRAINING_KEYS = ("device", "num_workers", "gpus", "retries", "grad_checkpointing")
# Keys that were removed, with where their job went: the schema's "unknown key" alone would not say.
_REPLACED_KEYS = {
    ("training", "runtime_minutes"): "each training job's SLURM runtime now comes from the compute plan "
    "(plan.safety_factor, plan.partition_limit_minutes, plan.min_runtime_minutes; docs/cluster.md)",
    ("training", "mem_mb"): "each training job's mem_mb now comes from the compute plan (plan.safety_factor; "
    "docs/cluster.md)",
}


class ConfigError(ValueError):
    """A configuration key is unknown, has the wrong type or names something that does not exist."""


def load_schema() -> dict[str, Any]:
    """Return the config JSON schema as a dict."""
    with open(SCHEMA_PATH, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _with_defaults(validator_class: type) -> type:
    """Extend a jsonschema validator so that ``default`` values are filled into the instance."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator: Any, properties: Mapping, instance: Any, schema: Mapping) -> Iterator:
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    key = _key_path(error)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        where = "" if key == "<top level>" else f" under '{key}'"
        return f"unknown config key {', '.join(repr(e) for e in extra)}{where}{hint}"
    if error.validator == "required":
        return f"config key '{key}': {error.message}"
    if error.validator == "propertyNames":
        return f"config key '{key}': name {error.instance!r} must match {error.schema.get('pattern')}"
    expected = error.schema.get("description", "")
    msg = f"config key '{key}': {error.message}"
    if expected:
        msg += f" (expected: {expected.strip()})"
    return msg


def validate_config(config: dict[str, Any], *, require_roots: bool = True) -> dict[str, Any]:
    """Validate ``config`` in place, fill schema defaults, check cross-references and return it.

    ``require_roots=False`` accepts dataset roots that do not exist (``cxrbench plan`` plans data not yet
    downloaded); the Snakefile always requires them.

    Raises:
        ConfigError: naming the first offending key and what was expected.
    """
    for (section, key), why in _REPLACED_KEYS.items():
        if isinstance(config.get(section), dict) and key in config[section]:
            raise ConfigError(f"config key '{section}.{key}' was removed: {why}")
    validator = _Validator(load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        raise ConfigError("\n".join(_describe(e) for e in errors[:5]))
    _check_references(config, require_roots=require_roots)
    return config


def _check_references(config: dict[str, Any], *, require_roots: bool) -> None:
    """Cross-key checks the schema cannot express."""
    inits = config["initialisations"]
    datasets = config["datasets"]
    for name, init in inits.items():
        if init["source"] == "pipeline":
            for key in ("pretrain_dataset", "pretrain_init"):
                if key not in init:
                    raise ConfigError(f"config key 'initialisations.{name}.{key}' is required for source 'pipeline'")
            if init["pretrain_dataset"] not in datasets:
                raise ConfigError(
                    f"config key 'initialisations.{name}.pretrain_dataset': {init['pretrain_dataset']!r} is not a "
                    f"configured dataset (have: {', '.join(datasets)})"
                )
            if init["pretrain_init"] not in inits or inits[init["pretrain_init"]]["source"] == "pipeline":
                raise ConfigError(
                    f"config key 'initialisations.{name}.pretrain_init': {init['pretrain_init']!r} must name a "
                    "non-pipeline initialisation"
                )
        _check_pretrain_training(config, name, init)
        if init["source"] == "file" and "file" not in init:
            raise ConfigError(f"config key 'initialisations.{name}.file' is required for source 'file'")
    ref = config["evaluation"].get("reference_init")
    if ref is not None and ref not in inits:
        raise ConfigError(f"config key 'evaluation.reference_init': {ref!r} is not a configured initialisation")
    for name, ds in datasets.items():
        root = Path(ds["root"])
        if require_roots and not is_demo_dataset(config, name) and not root.is_dir():
            raise ConfigError(f"config key 'datasets.{name}.root': folder {str(root)!r} does not exist")
        if ds["adapter"] == "generic_csv" and "columns" not in ds:
            raise ConfigError(f"config key 'datasets.{name}.columns' is required for adapter 'generic_csv'")
    _check_grid(config)


_PATCH = re.compile(r"patch(\d+)")


def patch_size(model: str) -> int | None:
    """The patch side of a timm ViT from its name (``vit_base_patch14_dinov2`` -> 14); None when the name has none
    (CNNs take any size; other models are not checked)."""
    m = _PATCH.search(model.split(".")[0])
    return int(m.group(1)) if m else None


def _nearest_multiples(size: int, step: int) -> str:
    below = size // step * step
    return f"{below}, {below + step}" if below else f"{step}"


def _check_grid(config: dict[str, Any]) -> None:
    """The ``grid`` axes: no value twice; every model size tiles into its initialisation's patches.

    A size that is not a multiple of the patch side is refused, not rounded or padded: a rounded size would not be
    the size the grid compares, and padding would add blank patches to one initialisation only.
    """
    grid = config.get("grid") or {}
    for axis in ("sizes", "seeds", "label_fractions", "regimes"):
        values = [float(v) if axis == "label_fractions" else v for v in grid.get(axis) or []]
        twice = sorted({str(v) for v in values if values.count(v) > 1})
        if twice:
            raise ConfigError(f"config key 'grid.{axis}': {', '.join(twice)} given more than once")
    sizes = list(grid.get("sizes") or [config["preprocess"]["size"]])
    inits = config["initialisations"]
    patches = {p for init in inits.values() if (p := patch_size(init["model"])) is not None}
    for name, init in inits.items():
        own = init.get("img_size")
        if own is not None and len(sizes) > 1:
            raise ConfigError(
                f"config key 'initialisations.{name}.img_size': a fixed model size ({own}) contradicts the "
                f"grid's {len(sizes)} sizes {sizes}; remove it so that the model is built at each grid size"
            )
        patch = patch_size(init["model"])
        for size in [own] if own is not None else sizes:
            if patch is not None and size % patch:
                key = f"initialisations.{name}.img_size" if own is not None else "grid.sizes"
                raise ConfigError(
                    f"config key '{key}': {size} px is not a multiple of the {patch}-px patch of initialisation "
                    f"{name!r} ({init['model']}); nearest valid sizes: {_nearest_multiples(size, patch)}; for "
                    f"every configured initialisation: {_nearest_multiples(size, math.lcm(*patches))}"
                )


def is_demo_dataset(config: dict[str, Any], name: str) -> bool:
    """True when dataset ``name`` is written by the demo: the demo is enabled and its root lies under ``demo.root``.

    Only such a root may be absent at parse time (the ``demo_data`` rule creates it); every other root must exist.
    """
    demo = config["demo"]
    root = Path(config["datasets"][name]["root"]).resolve()
    return bool(demo["enabled"]) and root.is_relative_to(Path(demo["root"]).resolve())


def _check_pretrain_training(config: dict[str, Any], name: str, init: dict[str, Any]) -> None:
    """``pretrain_training`` holds only non-runtime ``training`` keys, each valid where ``training`` takes it."""
    overrides = init.get("pretrain_training") or {}
    if not overrides:
        return
    where = f"initialisations.{name}.pretrain_training"
    if init["source"] != "pipeline":
        raise ConfigError(f"config key '{where}' applies only to source 'pipeline', not {init['source']!r}")
    training_schema = load_schema()["properties"]["training"]
    allowed = sorted(set(training_schema["properties"]) - set(RUNTIME_TRAINING_KEYS))
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown config key {', '.join(map(repr, unknown))} under '{where}'; allowed keys: "
                          f"{', '.join(allowed)}")
    merged = {**config["training"], **overrides}
    for error in jsonschema.Draft202012Validator(training_schema).iter_errors(merged):
        key = ".".join(str(p) for p in error.absolute_path)
        raise ConfigError(f"config key '{where}.{key}': {error.message}")


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file, validate it and fill defaults."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    with open(path, encoding="utf-8") as fh:
        config = yaml.safe_load(fh) or {}
    if not isinstance(config, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    return validate_config(config)


def parse_settings(text: str) -> dict[str, Any]:
    """Parse the ``--settings`` JSON that a rule passes to a stage command.

    Rules pass exactly the config values a stage uses as one JSON param, so Snakemake's params
    trigger reruns only the stages whose settings changed.
    """
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--settings is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ConfigError("--settings must be a JSON object")
    return value
