"""The initialisation registry: config entries -> :class:`InitSpec`, and where each one's weights live.

An initialisation is data, not code: a timm model name (optionally ``arch.tag``) plus a weight source

* ``hub``      -- the tag's weights from a pre-filled Hugging Face cache under ``weights.hf_home``, read offline;
* ``file``     -- a local ``.safetensors`` / ``.pth`` / ``.npz`` (relative paths are under ``weights.dir``);
* ``pipeline`` -- the best checkpoint of this workflow's supervised pre-training rule;
* ``none``     -- random initialisation.

This module imports neither torch nor timm at import time, so the workflow can run :func:`weights_problem`
while it builds the plan, for the initialisations its training jobs load (missing weights fail before any
job runs).
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cxrbench.config import ConfigError

_logger = logging.getLogger(__name__)

__all__ = [
    "InitSpec",
    "WeightsMissing",
    "all_init_specs",
    "fetch_command",
    "init_spec",
    "is_pipeline_self_run",
    "locate_weights",
    "weights_problem",
]

SOURCES = ("hub", "file", "pipeline", "none")


class WeightsMissing(FileNotFoundError):
    """Pretrained weights of an initialisation are not on disk; the message says how to fetch them."""


@dataclass(frozen=True)
class InitSpec:
    """One resolved ``initialisations.<name>`` entry.

    ``file`` is the resolved weight path for source ``file`` (``weights.dir`` applied), else None.
    ``img_size`` / ``pooling`` are None when the config leaves them to the preprocessing size / the
    architecture's own default.
    """

    name: str
    model: str
    source: str
    file: str | None = None
    img_size: int | None = None
    pooling: str | None = None
    pretrain_dataset: str | None = None
    pretrain_init: str | None = None
    transfer: str | None = None

    @property
    def architecture(self) -> str:
        """The timm architecture without its pretrained tag (``vit_base_patch16_224.augreg_in21k`` -> ``vit_base_patch16_224``)."""
        return self.model.split(".", 1)[0]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (keys with None values dropped, so settings stay minimal and stable)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> InitSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(**value)


def init_spec(config: dict[str, Any], name: str) -> InitSpec:
    """Resolve ``initialisations.<name>`` of a validated config into an :class:`InitSpec`.

    Raises:
        ConfigError: the name is not configured, or a ``pipeline`` entry pre-trains a different architecture.
    """
    inits = config["initialisations"]
    if name not in inits:
        raise ConfigError(f"initialisation {name!r} is not configured (have: {', '.join(inits)})")
    entry = inits[name]
    source = entry["source"]
    file = None
    if source == "file":
        path = Path(entry["file"])
        file = str(path if path.is_absolute() else Path(config["weights"]["dir"]) / path)
    spec = InitSpec(
        name=name,
        model=entry["model"],
        source=source,
        file=file,
        img_size=entry.get("img_size"),
        pooling=entry.get("pooling"),
        pretrain_dataset=entry.get("pretrain_dataset") if source == "pipeline" else None,
        pretrain_init=entry.get("pretrain_init") if source == "pipeline" else None,
        transfer=entry.get("transfer", "backbone") if source == "pipeline" else None,
    )
    if source == "pipeline":
        base = init_spec(config, spec.pretrain_init)  # config validation guarantees it is not a pipeline
        if base.architecture != spec.architecture:
            raise ConfigError(
                f"config key 'initialisations.{name}.model': {spec.model!r} must be the same architecture as its "
                f"pretrain_init {base.name!r} ({base.model!r}); the pre-trained checkpoint is loaded into it"
            )
    return spec


def all_init_specs(config: dict[str, Any]) -> list[InitSpec]:
    """Every configured initialisation, in config order."""
    return [init_spec(config, name) for name in config["initialisations"]]


def is_pipeline_self_run(spec: InitSpec, dataset: str) -> bool:
    """True for a ``pipeline`` initialisation on its own pre-training dataset.

    That run is not a separate arm: fine-tuning the pre-trained network again on the data it was
    pre-trained on is the ``pretrain_init`` run with extra epochs (paper-methods.md §6), so it is skipped.
    """
    return spec.source == "pipeline" and spec.pretrain_dataset == dataset


def _hf_home(config_or_dir: dict[str, Any] | str | Path) -> Path:
    if isinstance(config_or_dir, dict):
        return Path(config_or_dir["weights"]["hf_home"])
    return Path(config_or_dir)


def locate_weights(spec: InitSpec, *, hf_home: str | Path) -> Path | None:
    """Path of the weight file an initialisation loads, or None when it is not on disk.

    ``pipeline`` and ``none`` have no external weights and always return None.
    """
    if spec.source == "file":
        path = Path(spec.file)
        return path if path.is_file() else None
    if spec.source == "hub":
        from cxrbench.models import hub

        return hub.cached_file(spec.model, hf_home=Path(hf_home))
    return None


def fetch_command(spec: InitSpec, *, hf_home: str | Path) -> str:
    """The exact shell command that puts an initialisation's weights where :func:`locate_weights` looks."""
    if spec.source == "hub":
        return f"cxrbench weights fetch --model {shlex.quote(spec.model)} --hf-home {shlex.quote(str(hf_home))}"
    if spec.source == "file":
        return f"cxrbench weights fetch --model {shlex.quote(spec.model)} --out {shlex.quote(str(spec.file))}"
    raise ValueError(f"initialisation {spec.name!r} (source {spec.source!r}) has no weights to fetch")


def weights_problem(spec: InitSpec, *, hf_home: str | Path) -> str | None:
    """None when the weights of ``spec`` are in place, else a message with the fetch command and destination."""
    if spec.source not in ("hub", "file"):
        return None
    try:
        found = locate_weights(spec, hf_home=hf_home)
    except ValueError as exc:  # e.g. a hub tag without Hugging Face weights
        return f"initialisation {spec.name!r}: {exc}"
    if found is not None:
        return None
    if spec.source == "hub":
        from cxrbench.models import hub

        where = hub.cache_folder(spec.model, hf_home=Path(hf_home))
        return (
            f"initialisation {spec.name!r}: weights of {spec.model!r} are not in the offline Hugging Face cache "
            f"(looked in {where}).\n  On a machine with internet, run from the workflow directory:\n    "
            f"{fetch_command(spec, hf_home=hf_home)}\n  then copy {Path(hf_home)} to this machine at the same path."
        )
    return (
        f"initialisation {spec.name!r}: weight file {spec.file} does not exist.\n  Put the weights for "
        f"{spec.model!r} there (.safetensors, .pth or .npz), or, for a timm hub tag, run on a machine with "
        f"internet:\n    {fetch_command(spec, hf_home=hf_home)}"
    )


def check_all(config: dict[str, Any]) -> list[str]:
    """Problems (one message per initialisation) for every hub/file initialisation of a validated config."""
    hf_home = _hf_home(config)
    problems = []
    for spec in all_init_specs(config):
        msg = weights_problem(spec, hf_home=hf_home)
        if msg:
            problems.append(msg)
    return problems
