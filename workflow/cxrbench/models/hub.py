"""The offline Hugging Face cache that ``hub`` initialisations read, and the command that fills it.

Training nodes usually have no internet, so hub weights are downloaded once (``cxrbench weights fetch``) into
``<hf_home>/hub`` -- the standard cache layout ``models--<org>--<name>/{refs/main, snapshots/<sha>/<file>}`` --
and read with ``HF_HUB_OFFLINE=1``. The repository and file names come from timm's pretrained config of the
tag, and the file order mirrors timm's own loader (``model.safetensors`` before ``pytorch_model.bin``), so the
file found here is the file timm loads.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

_logger = logging.getLogger(__name__)

__all__ = ["HubSource", "cache_dir", "cache_folder", "cached_file", "enable_offline", "fetch", "hub_source"]

# timm tries the safetensors alternative of its default file name first (timm.models._hub).
_DEFAULT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class HubSource:
    """Where a timm tag's weights live on the Hugging Face hub."""

    repo_id: str
    revision: str | None
    filenames: tuple[str, ...]


def hub_source(model: str) -> HubSource:
    """The hub repository and candidate weight files of a timm model name (with or without tag).

    Raises:
        ValueError: unknown model, or a tag whose weights are not on the Hugging Face hub.
    """
    import timm.models

    arch = model.split(".", 1)[0]
    if not timm.models.is_model(arch):
        raise ValueError(f"{model!r} is not a timm model name")
    try:
        cfg = timm.models.get_pretrained_cfg(model, allow_unregistered=False)
    except RuntimeError as exc:
        raise ValueError(f"{model!r}: {exc}") from None
    if not cfg or not cfg.hf_hub_id:
        raise ValueError(
            f"{model!r} has no Hugging Face hub weights in timm; use source 'file' with a local weight file"
        )
    repo_id, _, revision = cfg.hf_hub_id.partition("@")
    names = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else _DEFAULT_FILES
    return HubSource(repo_id=repo_id, revision=revision or None, filenames=names)


def cache_dir(hf_home: Path) -> Path:
    """The hub cache folder under an ``HF_HOME`` root (what ``huggingface_hub`` calls ``HF_HUB_CACHE``)."""
    return Path(hf_home) / "hub"


def cache_folder(model: str, *, hf_home: Path) -> Path:
    """The cache folder of one model's repository (for messages)."""
    src = hub_source(model)
    return cache_dir(hf_home) / ("models--" + src.repo_id.replace("/", "--"))


def cached_file(model: str, *, hf_home: Path) -> Path | None:
    """The cached weight file timm would load for ``model``, or None if it is not in the cache."""
    from huggingface_hub import try_to_load_from_cache

    src = hub_source(model)
    for name in src.filenames:
        found = try_to_load_from_cache(src.repo_id, name, cache_dir=cache_dir(hf_home), revision=src.revision)
        if isinstance(found, str):  # else None (unknown) or the "known not to exist" sentinel
            return Path(found)
    return None


def enable_offline(hf_home: Path) -> None:
    """Point the Hugging Face libraries at ``hf_home`` and forbid network access.

    ``huggingface_hub`` reads ``HF_HUB_OFFLINE`` once, at import; when it is already imported (tests,
    notebooks) its module constant is set as well, so no code path tries the network.
    """
    os.environ["HF_HOME"] = str(Path(hf_home).resolve())
    os.environ["HF_HUB_OFFLINE"] = "1"
    if "huggingface_hub" in sys.modules:
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = True


def fetch(model: str, *, hf_home: Path | None = None, out: Path | None = None) -> Path:
    """Download ``model``'s weights into the cache under ``hf_home`` and/or copy them to ``out``.

    Needs internet. Returns the path written (``out`` if given, else the cache file).

    Raises:
        RuntimeError: offline mode is on, or none of the candidate files exists in the repository.
    """
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    if constants.HF_HUB_OFFLINE:
        raise RuntimeError("HF_HUB_OFFLINE is set: unset it to fetch weights (run this on a machine with internet)")
    src = hub_source(model)
    target_cache = cache_dir(hf_home) if hf_home is not None else None
    for name in src.filenames:
        if out is not None and Path(name).suffix != Path(out).suffix:
            continue
        try:
            path = Path(hf_hub_download(src.repo_id, name, revision=src.revision, cache_dir=target_cache))
        except EntryNotFoundError:
            _logger.info("%s: no %s in %s, trying the next file name", model, name, src.repo_id)
            continue
        _logger.info("%s: %s -> %s", model, name, path)
        if out is None:
            return path
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out)
        return Path(out)
    wanted = f" with suffix {Path(out).suffix}" if out is not None else ""
    raise RuntimeError(f"{src.repo_id} holds none of {', '.join(src.filenames)}{wanted}")
