"""``cxrbench validate-config``: check a config file and print the effective config."""

from __future__ import annotations

import argparse
import sys

import yaml

from cxrbench.config import ConfigError, load_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    yaml.safe_dump(cfg, sys.stdout, sort_keys=False)
    return 0
