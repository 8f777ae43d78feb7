"""``cxrbench weights check|fetch``: are the configured initialisations' weights in place, and fill them.

``check`` reads nothing from the network and exits 1 (listing the fetch commands) when weights are missing.
``fetch`` needs internet (run it on a login node, not in the DAG): it fills the offline Hugging Face cache for
``hub`` initialisations and writes ``file`` weights of timm hub tags to their configured path.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

_logger = logging.getLogger(__name__)

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``cxrbench weights``."""
    parser.add_argument("action", choices=["check", "fetch"])
    parser.add_argument(
        "--config", type=Path, default=Path("config.yaml"), help="workflow config (default config.yaml)"
    )
    parser.add_argument("--init", action="append", default=[], help="only these initialisations (repeatable)")
    parser.add_argument("--model", help="fetch: one timm model tag instead of the config's initialisations")
    parser.add_argument("--hf-home", type=Path, help="fetch --model: Hugging Face cache root to fill")
    parser.add_argument("--out", type=Path, help="fetch --model: write the weight file to this path instead")


def _fetch_one(model: str, *, hf_home: Path | None, out: Path | None) -> Path:
    from cxrbench.models import hub

    path = hub.fetch(model, hf_home=hf_home, out=out)
    print(f"{model}: {path}")
    return path


def run(args: argparse.Namespace) -> int:
    """Entry point of the subcommand."""
    from cxrbench.config import load_config
    from cxrbench.models.registry import all_init_specs, locate_weights, weights_problem

    if args.model:
        if args.action != "fetch" or (args.hf_home is None) == (args.out is None):
            print("--model needs the action 'fetch' and exactly one of --hf-home / --out", file=sys.stderr)
            return 2
        _fetch_one(args.model, hf_home=args.hf_home, out=args.out)
        return 0
    config = load_config(args.config)
    hf_home = Path(config["weights"]["hf_home"])
    specs = [s for s in all_init_specs(config) if not args.init or s.name in args.init]
    unknown = set(args.init) - {s.name for s in specs}
    if unknown:
        print(f"unknown initialisation(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    missing = 0
    for spec in specs:
        if spec.source in ("pipeline", "none"):
            print(f"{spec.name:<16} {spec.source:<9} {spec.model}: nothing to fetch")
            continue
        problem = weights_problem(spec, hf_home=hf_home)
        if problem is None:
            print(f"{spec.name:<16} {spec.source:<9} {spec.model}: ok ({locate_weights(spec, hf_home=hf_home)})")
            continue
        if args.action == "check":
            missing += 1
            print(f"{spec.name:<16} {spec.source:<9} {spec.model}: MISSING\n{problem}")
            continue
        _fetch_one(
            spec.model,
            hf_home=hf_home if spec.source == "hub" else None,
            out=Path(spec.file) if spec.source == "file" else None,
        )
    return 1 if missing else 0
