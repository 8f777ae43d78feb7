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
    <results>/runs/<init>/<ds>/...                   fine-tuning run (checkpoint, history, predictions, run.json)
    <results>/pretrain/<init>/<ds>/<scope>/...       supervised pre-training for a `pipeline` initialisation
                                                     (<scope> = all-labels | for-<target>)
    <results>/stats/<ds>/...                         bootstrap indices, metrics, paired tests
    <results>/tables/, <results>/figures/            publication outputs
    <results>/archive/                               publication archive

``<variant>`` is ``<mode>-<size>`` (e.g. ``paper-224``) so several resolutions coexist.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["Layout"]


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
    def variant(mode: str, size: int) -> str:
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

    # --- training ---------------------------------------------------------------------------------
    def run_dir(self, init: str, ds: str) -> Path:
        return self.root / "runs" / init / ds

    def pretrain_dir(self, init: str, ds: str) -> Path:
        return self.root / "pretrain" / init / ds

    def pretrain_run_dir(self, init: str, ds: str, target: str | None) -> Path:
        """Supervised pre-training for ``init`` on ``ds``: once on all labels (``backbone`` transfer) or once
        per target dataset on the labels it shares with ``ds`` (``study`` transfer)."""
        return self.pretrain_dir(init, ds) / ("all-labels" if target is None else f"for-{target}")

    # --- evaluation and publication -------------------------------------------------------------
    def stats_dir(self, ds: str) -> Path:
        return self.root / "stats" / ds

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
