"""``cxrbench plan``: device-hours, CPU-hours, disk and memory of a config before any job is submitted.

The config is read the way the Snakefile reads it: ``config.yaml`` in the current directory, or the
``--configfile`` files merged left to right (later files win, recursively) on the schema defaults. Dataset
folders need not exist yet: the plan does not read them (it names the folders it did not find).
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from cxrbench.config import ConfigError, is_demo_dataset, validate_config

_logger = logging.getLogger(__name__)

__all__ = ["add_arguments", "load_plan_config", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--configfile", nargs="+", type=Path, default=None,
                   help="config file(s), merged left to right (default: config.yaml in the current directory)")
    p.add_argument("--gpu", default=None,
                   help="GPU model from resources/gpus.csv (default: plan.gpu, else cpu for CPU training, else A100-80GB)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format")
    p.add_argument("--jobs", action="store_true", help="also list every job")


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Snakemake's config merge: mappings merge recursively, everything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_plan_config(paths: list[Path] | None) -> tuple[dict[str, Any], list[str]]:
    """The validated config of ``paths`` (default ``config.yaml``) and the dataset roots that do not exist.

    Roots are the only check relaxed (``require_roots=False``): every other key is validated exactly as the
    Snakefile does, since the plan of data not yet downloaded is a use of the plan.
    """
    config: dict[str, Any] = {}
    for path in paths or [Path("config.yaml")]:
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
        config = _merge(config, loaded)
    validate_config(config, require_roots=False)
    missing = [name for name, entry in config["datasets"].items()
               if not Path(entry["root"]).is_dir() and not is_demo_dataset(config, name)]
    return config, missing


def run(args: argparse.Namespace) -> int:
    from cxrbench.plan.model import PlanError

    t0 = time.perf_counter()
    try:
        config, missing = load_plan_config(args.configfile)
        from cxrbench.plan.estimates import build_plan
        from cxrbench.plan.render import render

        plan = build_plan(config, gpu=args.gpu)
    except (ConfigError, PlanError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(render(plan, fmt=args.format, jobs=args.jobs))
    if missing:
        print(f"note: dataset folders not found (planned from defaults): {', '.join(missing)}", file=sys.stderr)
    _logger.debug("plan made in %.1f s", time.perf_counter() - t0)
    return 0
