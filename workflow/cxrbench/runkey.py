"""The experiment grid's typed keys: one :class:`RunKey` per training run, one :class:`CellKey` per comparison.

A run is identified by (initialisation, dataset, size, regime, label fraction, replicate seed). Runs that differ
only in the initialisation form a *cell*: they share the dataset's test images and its bootstrap indices, so
initialisations are compared within a cell (and, pooled over seeds, across the cells that differ only in seed).
Every axis defaults to one value (``grid`` config section), so a config without ``grid`` has one cell per dataset.

Directory names are readable and fixed here (``Layout`` uses :meth:`RunKey.relpath` / :meth:`CellKey.relpath`)::

    <init>/<dataset>/<size>px/<regime>/frac-<fraction>/seed-<seed>
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from pathlib import PurePosixPath
from typing import Any

__all__ = [
    "DEFAULT_REGIME",
    "DEFAULT_SEED",
    "REGIMES",
    "CellKey",
    "GridAxes",
    "RunKey",
    "format_fraction",
    "grid_axes",
    "grid_runs",
    "parse_fraction",
]

REGIMES: tuple[str, ...] = ("finetune", "linear_probe", "lora")
DEFAULT_REGIME = "finetune"
# Replicate 0 is the run a config without `grid.seeds` trains: its torch seed is the one derived from the master
# seed and the dataset alone, so adding the grid changes no existing number.
DEFAULT_SEED = 0


def format_fraction(fraction: float) -> str:
    """Shortest exact decimal of a label fraction, as used in paths and tables (1.0 -> '1', 0.01 -> '0.01')."""
    text = repr(float(fraction))
    return text.removesuffix(".0")


def parse_fraction(text: str) -> float:
    """Inverse of :func:`format_fraction`; raises ValueError outside (0, 1]."""
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"label fraction {text!r} is not in (0, 1]")
    return value


@dataclass(frozen=True, order=True)
class CellKey:
    """Everything that fixes a comparison between initialisations: same test images, same bootstrap indices."""

    dataset: str
    size: int
    regime: str = DEFAULT_REGIME
    fraction: float = 1.0
    seed: int = DEFAULT_SEED

    def relpath(self) -> PurePosixPath:
        return PurePosixPath(
            self.dataset, f"{self.size}px", self.regime, f"frac-{format_fraction(self.fraction)}", f"seed-{self.seed}"
        )

    @classmethod
    def from_relpath(cls, text: str) -> CellKey:
        """Inverse of :meth:`relpath`: ``<dataset>/<size>px/<regime>/frac-<f>/seed-<s>``; ValueError naming the text."""
        parts = PurePosixPath(text).parts
        match = len(parts) == 5 and all((
            re.fullmatch(r"[1-9][0-9]*px", parts[1]), parts[2] in REGIMES,
            parts[3].startswith("frac-"), re.fullmatch(r"seed-(0|-?[1-9][0-9]*)", parts[4]),
        ))
        if not match:
            raise ValueError(f"cell {text!r} is not <dataset>/<size>px/<regime>/frac-<fraction>/seed-<seed> "
                             f"(regime one of {', '.join(REGIMES)})")
        try:
            fraction = parse_fraction(parts[3][5:])
        except ValueError as exc:
            raise ValueError(f"cell {text!r}: {exc}") from exc
        key = cls(parts[0], int(parts[1][:-2]), parts[2], fraction, int(parts[4][5:]))
        if key.relpath() != PurePosixPath(text):  # e.g. frac-1.0 or frac-0.50: not the path this key writes
            raise ValueError(f"cell {text!r} is not in canonical form; expected {key.relpath()}")
        return key

    def with_init(self, init: str) -> RunKey:
        return RunKey(init=init, **asdict(self))

    def axes(self) -> dict[str, Any]:
        """Column values of this cell in the grid tables (``label_fraction`` as the tables name it)."""
        return {
            "dataset": self.dataset,
            "size": self.size,
            "regime": self.regime,
            "label_fraction": self.fraction,
            "seed": self.seed,
        }


@dataclass(frozen=True, order=True)
class RunKey:
    """One training run of the grid."""

    init: str
    dataset: str
    size: int
    regime: str = DEFAULT_REGIME
    fraction: float = 1.0
    seed: int = DEFAULT_SEED

    def __post_init__(self) -> None:
        if self.regime not in REGIMES:
            raise ValueError(f"unknown regime {self.regime!r} (have: {', '.join(REGIMES)})")
        if not 0.0 < float(self.fraction) <= 1.0:
            raise ValueError(f"label fraction {self.fraction!r} is not in (0, 1]")

    @property
    def cell(self) -> CellKey:
        return CellKey(self.dataset, self.size, self.regime, self.fraction, self.seed)

    def relpath(self) -> PurePosixPath:
        return PurePosixPath(self.init) / self.cell.relpath()

    def wildcards(self) -> dict[str, str]:
        """Snakemake wildcard values (``init, ds, size, regime, fraction, seed``) of this run."""
        return {
            "init": self.init,
            "ds": self.dataset,
            "size": str(self.size),
            "regime": self.regime,
            "fraction": format_fraction(self.fraction),
            "seed": str(self.seed),
        }

    @classmethod
    def from_wildcards(cls, w: Any) -> RunKey:
        """The key of a job from its wildcards (the inverse of :meth:`wildcards`)."""
        return cls(
            init=str(w.init),
            dataset=str(w.ds),
            size=int(w.size),
            regime=str(w.regime),
            fraction=parse_fraction(str(w.fraction)),
            seed=int(w.seed),
        )

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True)
class GridAxes:
    """The values of each grid axis, in config order."""

    sizes: tuple[int, ...]
    seeds: tuple[int, ...]
    label_fractions: tuple[float, ...]
    regimes: tuple[str, ...]


def grid_axes(config: dict[str, Any]) -> GridAxes:
    """The grid of a validated config; each axis defaults to one value (today's single run per dataset)."""
    grid = config.get("grid") or {}
    return GridAxes(
        sizes=tuple(int(s) for s in grid.get("sizes") or [config["preprocess"]["size"]]),
        seeds=tuple(int(s) for s in grid.get("seeds") or [DEFAULT_SEED]),
        label_fractions=tuple(float(f) for f in grid.get("label_fractions") or [1.0]),
        regimes=tuple(grid.get("regimes") or [DEFAULT_REGIME]),
    )


def grid_runs(config: dict[str, Any]) -> list[RunKey]:
    """Every fine-tuning run of a validated config: (init, dataset) pairs times the grid axes, in config order.

    A ``pipeline`` initialisation on its own pre-training dataset is not an arm and has no runs there.
    """
    from cxrbench.models.registry import init_spec, is_pipeline_self_run

    axes = grid_axes(config)
    runs = []
    for init in config["initialisations"]:
        spec = init_spec(config, init)
        for ds in config["datasets"]:
            if is_pipeline_self_run(spec, ds):
                continue
            for size in axes.sizes:
                for regime in axes.regimes:
                    for fraction in axes.label_fractions:
                        for seed in axes.seeds:
                            runs.append(RunKey(init, ds, size, regime, fraction, seed))
    return runs
