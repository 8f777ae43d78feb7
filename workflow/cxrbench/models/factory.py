"""Build the timm model of an initialisation with its weights loaded.

Every pretrained source goes through timm's own pretrained machinery (``create_model(pretrained=True,
pretrained_cfg_overlay=...)``), so the model's checkpoint filter converts foreign formats (e.g. Meta DINOv2),
resamples position embeddings to ``img_size`` and drops a classifier whose size does not match. timm then
loads non-strictly, so :func:`check_loaded_keys` verifies that the weights covered everything but the head.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxrbench.models import hub
from cxrbench.models.registry import InitSpec, WeightsMissing, locate_weights, weights_problem

_logger = logging.getLogger(__name__)

__all__ = [
    "IncompleteWeights",
    "build_model",
    "check_loaded_keys",
    "data_config",
    "select_head_rows",
    "sha256_file",
]


def sha256_file(path: str | Path, *, chunk: int = 1 << 22) -> str:
    """SHA-256 hex digest of a file (recorded in run.json for every weight file a run loads)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _create(model: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model``; size-agnostic architectures (CNNs) get no ``img_size``."""
    import timm

    try:
        return timm.create_model(model, **kwargs)
    except TypeError as exc:
        if "img_size" not in str(exc) or "img_size" not in kwargs:
            raise
        _logger.debug("%s takes no img_size (size-agnostic architecture)", model)
        kwargs.pop("img_size")
        return timm.create_model(model, **kwargs)


def build_model(
    spec: InitSpec,
    *,
    num_classes: int,
    img_size: int,
    hf_home: str | Path,
    pipeline_state: dict[str, torch.Tensor] | None = None,
    keep_head: bool = False,
) -> nn.Module:
    """The model of ``spec`` with ``num_classes`` sigmoid outputs at ``img_size`` pixels, weights loaded.

    Args:
        spec: the initialisation.
        num_classes: number of labels (the head is new unless ``keep_head``).
        img_size: input side length; absolute position embeddings are resampled to it.
        hf_home: offline Hugging Face cache root (source ``hub``).
        pipeline_state: source ``pipeline`` only -- the pre-trained state dict (from its ``best.pt``).
        keep_head: source ``pipeline`` only -- load the pre-trained classifier as well (``transfer: study`` or
            ``shared_head``; the caller cuts the head to the run's labels with :func:`select_head_rows`).

    Raises:
        WeightsMissing: hub/file weights are not on disk (message with the fetch command).
        IncompleteWeights: the weights leave a layer other than the classifier uninitialised, or carry keys
            the model does not have (names them).
        ValueError: a pipeline initialisation without ``pipeline_state``.
    """
    kwargs: dict[str, Any] = {"num_classes": num_classes, "img_size": img_size}
    if spec.pooling is not None:
        kwargs["global_pool"] = spec.pooling
    # The data config then reports the size we train at, not the pretraining size (DINOv2: 518).
    overlay: dict[str, Any] = {"input_size": (3, img_size, img_size)}
    if spec.source == "none":
        model = _create(spec.model, pretrained=False, pretrained_cfg_overlay=overlay, **kwargs)
    elif spec.source in ("hub", "file"):
        problem = weights_problem(spec, hf_home=hf_home)
        if problem:
            raise WeightsMissing(problem)
        if spec.source == "hub":
            hub.enable_offline(Path(hf_home))
        path = locate_weights(spec, hf_home=hf_home)
        if path.suffix == ".npz":
            # custom_load=True sends the file to the model's own loader (Google .npz), which reads every
            # array by name and fails on a missing one; always explicit, because its default changed
            # between timm releases (ecosystem.md §C).
            overlay.update(file=str(path), custom_load=True)
            model = _create(spec.model, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
        else:
            # Read once here and hand timm the state dict, so the keys checked are exactly those it loads.
            import timm.models

            state = timm.models.load_state_dict(str(path))
            overlay.update(state_dict=state, custom_load=False)
            model = _create(spec.model, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
            check_loaded_keys(model, state, head=_classifier_keys(spec.model), source=str(path))
    elif spec.source == "pipeline":
        if pipeline_state is None:
            raise ValueError(f"initialisation {spec.name!r}: source 'pipeline' needs the pre-trained state dict")
        # A pretrained cfg with num_classes 0 means "no classifier in these weights" to timm (as for DINOv2):
        # it keeps the new head's default init and loads everything else. With keep_head the counts match and
        # timm loads strictly, head included.
        overlay.update(state_dict=dict(pipeline_state), num_classes=num_classes if keep_head else 0, custom_load=False)
        head = _classifier_keys(spec.model)
        if not keep_head:
            overlay["state_dict"] = {k: v for k, v in pipeline_state.items() if k.rsplit(".", 1)[0] not in head}
        model = _create(spec.model, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
        source = f"the pre-trained checkpoint of {spec.pretrain_init!r}"
        check_loaded_keys(model, pipeline_state, head=head, source=source)
    else:
        raise ValueError(f"initialisation {spec.name!r}: unknown source {spec.source!r}")
    _logger.info(
        "model %s (%s, source %s): %d classes at %d px, %.1fM parameters",
        spec.name,
        spec.model,
        spec.source,
        num_classes,
        img_size,
        sum(p.numel() for p in model.parameters()) / 1e6,
    )
    return model


class IncompleteWeights(RuntimeError):
    """A weight file does not cover the network: layers would stay random while the run reports pretrained."""


# Renames applied after timm's checkpoint filter: an avg-pooled ViT normalises the pooled features with
# `fc_norm` where a token-pooled checkpoint has the final `norm` (the same LayerNorm, moved after pooling).
_POOLING_RENAMES = {"norm.weight": "fc_norm.weight", "norm.bias": "fc_norm.bias"}


def check_loaded_keys(model: nn.Module, state: dict[str, torch.Tensor], *, head: set[str], source: str) -> None:
    """Stop unless ``state`` covers every parameter and buffer of ``model`` except the classifier ``head``.

    timm loads pretrained weights non-strictly whenever the class count differs (always, for a new head) and
    only logs missing keys, so a truncated file would leave layers at random init. The check replays the
    architecture's own timm checkpoint filter (format conversion, position-embedding resampling), applies
    the documented renames (:data:`_POOLING_RENAMES`, loaded into the model here), and then compares keys.

    Raises:
        IncompleteWeights: naming the missing and the unexpected keys and the weight source.
    """
    expected = set(model.state_dict())
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    given = filter_fn(dict(state), model) if filter_fn is not None else dict(state)
    renamed = {
        new: given.pop(old)
        for old, new in _POOLING_RENAMES.items()
        if old in given and old not in expected and new in expected and new not in given
    }
    if renamed:
        model.load_state_dict(renamed, strict=False)
        given.update(renamed)

    def outside_head(key: str) -> bool:
        return key.rsplit(".", 1)[0] not in head

    missing = sorted(k for k in expected - set(given) if outside_head(k))
    unexpected = sorted(k for k in set(given) - expected if outside_head(k))
    if missing or unexpected:
        lines = [f"weights from {source} do not fit {type(model).__name__} (only the classifier may differ):"]
        if missing:
            lines.append(f"  missing ({len(missing)}): {_abbreviate(missing)}")
        if unexpected:
            lines.append(f"  unexpected ({len(unexpected)}): {_abbreviate(unexpected)}")
        lines.append("  Is the file complete and made for this architecture (initialisations.<name>.model)?")
        raise IncompleteWeights("\n".join(lines))


def _abbreviate(keys: list[str], limit: int = 30) -> str:
    """The keys, comma-separated; a long list is cut after ``limit`` with the count of the rest."""
    shown = ", ".join(keys[:limit])
    return shown if len(keys) <= limit else f"{shown}, ... and {len(keys) - limit} more"


def select_head_rows(state: dict[str, torch.Tensor], *, model: str, rows: list[int]) -> dict[str, torch.Tensor]:
    """``state`` with the classifier's outputs cut to ``rows`` (in that order); every other tensor unchanged.

    ``transfer: shared_head`` keeps the pre-trained head's rows of the labels a target shares with the
    pre-training dataset. A classifier whose tensors have no output dimension (none in timm) would be an error.
    """
    head = _classifier_keys(model)
    index = torch.as_tensor(rows, dtype=torch.long)
    out = dict(state)
    for key, value in state.items():
        if key.rsplit(".", 1)[0] in head:
            if value.ndim == 0 or value.shape[0] <= max(rows, default=-1):
                raise ValueError(f"classifier tensor {key!r} of shape {tuple(value.shape)} has no rows {rows}")
            out[key] = value.index_select(0, index).clone()
    return out


def _classifier_keys(model: str) -> set[str]:
    """Module names of the classifier(s) of a timm architecture (from its pretrained config)."""
    import timm.models

    cfg = timm.models.get_pretrained_cfg(model)
    names = getattr(cfg, "classifier", None) or "head"
    return {names} if isinstance(names, str) else set(names)


def data_config(model: nn.Module) -> dict[str, Any]:
    """timm's resolved data config (mean, std, input size) of a built model."""
    import timm.data

    return timm.data.resolve_model_data_config(model)


def weights_file(spec: InitSpec, *, hf_home: str | Path) -> Path | None:
    """The external weight file an initialisation loads (hub/file), for hashing; None otherwise."""
    return locate_weights(spec, hf_home=hf_home)
