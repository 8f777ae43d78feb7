"""The one place that decides where every file under ``results/`` lives.

Data flows one way through these paths::

    <demo root>/...                                  synthetic native datasets (demo only)
    <results>/<ds>/index.parquet                     adapter output: one row per listed image, raw labels
    <results>/<ds>/labels.parquet                    harmonised: canonical findings 1/0/NaN, view, split
    <results>/<ds>/labels.summary.{csv,md}           counts per split, prevalence, exclusions with reasons
    <results>/<ds>/png/<variant>/shards.parquet      image -> shard assignment
    <results>/<ds>/png/<variant>/shard-<k>/...       8-bit grey PNGs
    <results>/<ds>/png/<variant>/shard-<k>.manifest.parquet
    <results>/<ds>/png/<variant>/manifest.parquet    all shards, plus rejected.parquet
    <results>/<ds>/cache/<variant>/<split>.npy       packed uint8 training arrays (+ .index.parquet)
    <results>/<ds>/fractions.parquet                 nested label-fraction subsets of train (+ fractions.counts.csv)
    <results>/features/<init>/<ds>/<size>px/...      frozen backbone features (linear_probe regime)
    <results>/runs/<run>/...                         training run (checkpoint, history, predictions, run.json)
    <results>/pretrain/<init>/<ds>/<size>px/<scope>/...  supervised pre-training for a `pipeline` initialisation
                                                     (<scope> = all-labels | for-<target>)
    <results>/stats/<cell>/...                       bootstrap indices, metrics, paired tests
    <results>/tables/, <results>/figures/            publication outputs (the grid's: tables/grid*.csv, figures/grid_*)
    <results>/archive/                               publication archive

``<variant>`` is ``<mode>-<size>`` (e.g. ``paper-224``): one preprocessing variant per grid size.
``<run>`` is ``<init>/<cell>`` and ``<cell>`` is ``<ds>/<size>px/<regime>/frac-<fraction>/seed-<seed>``
(:meth:`cxrbench.runkey.RunKey.relpath`, :meth:`cxrbench.runkey.CellKey.relpath`).
"""

from __future__ import annotations

from pathlib import Path

from cxrbench.runkey import CellKey, RunKey

__all__ = ["CELL_PATTERN", "RUN_PATTERN", "Layout"]

# Run and cell folders with Snakemake wildcards in place of the values: the rules' output patterns. They spell
# RunKey.relpath() / CellKey.relpath() of the key whose wildcards() fill them (tests/test_grid_config.py pins it).
CELL_PATTERN = "{ds}/{size}px/{regime}/frac-{fraction}/seed-{seed}"
RUN_PATTERN = "{init}/" + CELL_PATTERN


class Layout:
    """Paths of one workflow run, rooted at ``results``."""

    def __init__(self, results: str | Path = "results") -> None:
        self.root = Path(results)

    # --- datasets -------------------------------------------------------------------------------
    def dataset_dir(self, ds: str) -> Path:
        return self.root / ds

    def index(self, ds: str) -> Path:
        return self.dataset_dir(ds) / "index.parquet"

    def labels(self, ds: str) -> Path:
        return self.dataset_dir(ds) / "labels.parquet"

    def labels_summary(self, ds: str, ext: str = "csv") -> Path:
        return self.dataset_dir(ds) / f"labels.summary.{ext}"

    @staticmethod
    def variant(mode: str, size: int | str) -> str:
        return f"{mode}-{size}"

    def png_dir(self, ds: str, variant: str) -> Path:
        return self.dataset_dir(ds) / "png" / variant

    def shard_plan(self, ds: str, variant: str) -> Path:
        return self.png_dir(ds, variant) / "shards.parquet"

    def shard_dir(self, ds: str, variant: str, shard: int | str) -> Path:
        return self.png_dir(ds, variant) / f"shard-{shard}"

    def shard_members(self, ds: str, variant: str, shard: int | str) -> Path:
        """Membership file of one shard, written by the plan checkpoint outside any rule's outputs."""
        return self.png_dir(ds, variant) / "members" / f"shard-{shard}.tsv"

    def shard_manifest(self, ds: str, variant: str, shard: int | str) -> Path:
        return self.png_dir(ds, variant) / f"shard-{shard}.manifest.parquet"

    def manifest(self, ds: str, variant: str) -> Path:
        return self.png_dir(ds, variant) / "manifest.parquet"

    def rejected(self, ds: str, variant: str) -> Path:
        return self.png_dir(ds, variant) / "rejected.parquet"

    def cache_dir(self, ds: str, variant: str) -> Path:
        return self.dataset_dir(ds) / "cache" / variant

    def fractions(self, ds: str) -> Path:
        """Nested label-fraction subsets of the dataset's train split."""
        return self.dataset_dir(ds) / "fractions.parquet"

    def fraction_counts(self, ds: str) -> Path:
        """Positives per label and label fraction of the subsets in :meth:`fractions`."""
        return self.dataset_dir(ds) / "fractions.counts.csv"

    # --- training ---------------------------------------------------------------------------------
    def features_dir(self, init: str, ds: str, size: int | str) -> Path:
        """Frozen backbone features of ``init`` on every split of ``ds`` at ``size`` px (linear probes)."""
        return self.root / "features" / init / ds / f"{size}px"

    def runs_root(self) -> Path:
        return self.root / "runs"

    def run_dir(self, key: RunKey) -> Path:
        """``<results>/runs/<init>/<ds>/<size>px/<regime>/frac-<fraction>/seed-<seed>``."""
        return self.runs_root() / key.relpath()

    @staticmethod
    def pretrain_scope(target: str | None) -> str:
        """Folder name of a pre-training's label scope: all labels (``backbone`` transfer) or one target's."""
        return "all-labels" if target is None else f"for-{target}"

    def pretrain_run_dir(self, init: str, ds: str, size: int | str, scope: str) -> Path:
        """Supervised pre-training for ``init`` on ``ds`` at ``size`` px in label scope ``scope``
        (:meth:`pretrain_scope`): once on all labels, or once per target on the labels it shares with ``ds``."""
        return self.root / "pretrain" / init / ds / f"{size}px" / scope

    # --- evaluation and publication -------------------------------------------------------------
    def stats_root(self) -> Path:
        return self.root / "stats"

    def stats_dir(self, cell: CellKey) -> Path:
        """``<results>/stats/<ds>/<size>px/<regime>/frac-<fraction>/seed-<seed>``: one comparison cell."""
        return self.stats_root() / cell.relpath()

    def external_root(self) -> Path:
        return self.root / "external"

    def external_dir(self, key: RunKey, test_dataset: str) -> Path:
        """``<results>/external/<run key>/on-<test dataset>``: run ``key`` predicting another dataset's test split."""
        return self.external_root() / key.relpath() / f"on-{test_dataset}"

    def external_args(self) -> Path:
        """The argument file of ``cxrbench external`` (one argument per line: the full grid's list is too long
        for one shell command)."""
        return self.root / "external" / "external.args"

    def tables_dir(self) -> Path:
        return self.root / "tables"

    def figures_dir(self) -> Path:
        return self.root / "figures"

    def archive_dir(self) -> Path:
        return self.root / "archive"

    def results_readme(self) -> Path:
        return self.root / "README.md"

    def logs(self) -> Path:
        return self.root / "logs"
