# Statistics and publication outputs (docs/outputs.md): one `evaluate` job per comparison cell (dataset, size,
# regime, label fraction, seed: metrics, the dataset's paired bootstrap, pairwise tests), then one `aggregate` job
# over each dataset's primary cell (Benjamini-Hochberg over all datasets, tables, figures, results README) and,
# when the grid has more than one cell per dataset, one `grid` job over every cell. File names come from
# cxrbench.evaluation.outputs. Uses RUNS (RunKeys) and run_predictions(key) from train.smk.
from cxrbench.evaluation import outputs as EVAL_FILES
from cxrbench.runkey import parse_fraction as _parse_fraction

# Initialisations with a run on each dataset, in config order: the same in every cell of the dataset.
CELL_INITS = {}
for _key in RUNS:
    if _key.init not in CELL_INITS.setdefault(_key.dataset, []):
        CELL_INITS[_key.dataset].append(_key.init)
EVAL_DATASETS = [ds for ds in DATASETS if ds in CELL_INITS]
# Every cell, in config order of the datasets and of each axis.
CELLS = [
    CellKey(ds, size, regime, fraction, seed)
    for ds in EVAL_DATASETS
    for size in AXES.sizes
    for regime in AXES.regimes
    for fraction in AXES.label_fractions
    for seed in AXES.seeds
]
# Today's tables and figures come from one cell per dataset, the first value of every axis: without a `grid`
# section that is the dataset's only cell, so the tables are those of a workflow without the grid.
PRIMARY_CELLS = [CellKey(ds, AXES.sizes[0], AXES.regimes[0], AXES.label_fractions[0], AXES.seeds[0])
                 for ds in EVAL_DATASETS]
GRID = len(CELLS) > len(EVAL_DATASETS)  # the `grid` job runs only when some dataset has more than one cell
PIPELINE_INITS = [i for i in INITS if config["initialisations"][i]["source"] == "pipeline"]


def evaluation_settings() -> dict:
    """What evaluate/aggregate compute from: the evaluation section, the master seed, the inits."""
    return {
        # `external` only adds the external-validation jobs (external.smk): switching it reruns no evaluation
        "evaluation": {k: v for k, v in config["evaluation"].items() if k != "external"},
        "seed": config["seed"],
        "inits": INITS,
        "pipeline_inits": PIPELINE_INITS,
    }


def aggregate_settings() -> dict:
    """The evaluation settings plus each pipeline init's pre-training dataset (tables say why it has no run there)."""
    return {
        **evaluation_settings(),
        "pretrain_datasets": {i: config["initialisations"][i]["pretrain_dataset"] for i in PIPELINE_INITS},
    }


def _cell(w) -> CellKey:
    return CellKey(w.ds, int(w.size), w.regime, _parse_fraction(w.fraction), int(w.seed))


def _cell_predictions(cell: CellKey) -> dict:
    """init -> predictions.parquet of each run in ``cell``."""
    return {init: run_predictions(cell.with_init(init)) for init in CELL_INITS[cell.dataset]}


def _stats(stats_dir) -> dict:
    files = EVAL_FILES.stats_files(stats_dir)
    return {name: str(getattr(files, name)) for name in files.__dataclass_fields__}


def _reported(path, *, caption: str, category: str, subcategory: str, labels: dict):
    return report(str(path), caption=f"../report/{caption}.rst", category=category, subcategory=subcategory,
                  labels=labels)


def aggregate_outputs() -> dict:
    """Every table and figure (CSV tables and PNG figures registered in the Snakemake report)."""
    out = {}
    tables, figures = LAYOUT.tables_dir(), LAYOUT.figures_dir()
    for name in EVAL_FILES.table_names(EVAL_DATASETS, overlap=bool(PIPELINE_INITS)):
        kind, ds = (("auroc_per_label", name.removeprefix("auroc_per_label_"))
                    if name.startswith("auroc_per_label_") else (name, "all datasets"))
        for ext, path in EVAL_FILES.table_files(tables, name).items():
            out[f"table_{name}_{ext}"] = (
                _reported(path, caption=kind, category="Tables", subcategory=kind,
                          labels={"table": kind, "dataset": ds}) if ext == "csv" else str(path)
            )
    for name in EVAL_FILES.figure_names(EVAL_DATASETS):
        kind, _, ds = name.partition("_")
        for ext, path in EVAL_FILES.figure_files(figures, name).items():
            out[f"figure_{name}_{ext}"] = (
                _reported(path, caption=kind, category="Figures", subcategory=kind,
                          labels={"figure": kind, "dataset": ds or "all datasets"}) if ext == "png" else str(path)
            )
    out["readme"] = str(EVAL_FILES.results_readme_path(LAYOUT))
    return out


def grid_outputs() -> dict:
    """The grid's tables and figures (only when GRID; CSV tables and PNG figures in the Snakemake report)."""
    out = {}
    for name in EVAL_FILES.GRID_TABLES:
        path = EVAL_FILES.grid_table_file(LAYOUT.tables_dir(), name)
        out[f"table_{name}"] = _reported(path, caption=name, category="Grid", subcategory="Tables",
                                         labels={"table": name})
    for name in EVAL_FILES.GRID_FIGURES:
        for ext, path in EVAL_FILES.figure_files(LAYOUT.figures_dir(), name).items():
            out[f"figure_{name}_{ext}"] = (
                _reported(path, caption=name, category="Grid", subcategory="Figures", labels={"figure": name})
                if ext == "png" else str(path)
            )
    return out


def evaluate_targets() -> list:
    """Final evaluation outputs, picked up by all_targets() in common.smk."""
    return [str(p) for p in aggregate_outputs().values()] + ([str(p) for p in grid_outputs().values()] if GRID else [])


rule evaluate:
    input:
        lambda w: list(_cell_predictions(_cell(w)).values()),
    output:
        **_stats(LAYOUT.stats_root() / CELL_PATTERN),
    params:
        settings=settings(evaluation_settings()),
        # The bootstrap seed comes from the master seed and the dataset only: every cell of a dataset resamples
        # the same test images with the same indices.
        predictions=lambda w: " ".join(
            "--predictions " + shlex.quote(f"{init}={path}") for init, path in _cell_predictions(_cell(w)).items()
        ),
        out_dir=lambda w: shlex.quote(str(LAYOUT.stats_dir(_cell(w)))),
    conda:
        "../../envs/evaluate.yaml"
    log:
        LAYOUT.logs() / "evaluate" / f"{CELL_PATTERN}.log",
    threads: 2
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "{CXRBENCH} evaluate --settings {params.settings} --dataset {wildcards.ds} {params.predictions} "
        "--out-dir {params.out_dir} --threads {threads} > {log} 2>&1"


rule aggregate:
    input:
        [f for cell in PRIMARY_CELLS for f in _stats(LAYOUT.stats_dir(cell)).values()],
    output:
        **aggregate_outputs(),
    params:
        settings=settings(aggregate_settings()),
        stats=" ".join(
            "--stats " + shlex.quote(f"{cell.dataset}={LAYOUT.stats_dir(cell)}") for cell in PRIMARY_CELLS
        ),
        tables=shlex.quote(str(LAYOUT.tables_dir())),
        figures=shlex.quote(str(LAYOUT.figures_dir())),
    conda:
        "../../envs/evaluate.yaml"
    log:
        LAYOUT.logs() / "aggregate.log",
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "{CXRBENCH} aggregate --settings {params.settings} {params.stats} --tables-dir {params.tables} "
        "--figures-dir {params.figures} --readme {output.readme} > {log} 2>&1"


if GRID:

    rule grid:
        input:
            [f for cell in CELLS for f in _stats(LAYOUT.stats_dir(cell)).values()],
        output:
            **grid_outputs(),
        params:
            settings=settings(aggregate_settings()),  # the cells come as --cell, in config order
            cells=" ".join("--cell " + shlex.quote(f"{cell.relpath()}={LAYOUT.stats_dir(cell)}") for cell in CELLS),
            tables=shlex.quote(str(LAYOUT.tables_dir())),
            figures=shlex.quote(str(LAYOUT.figures_dir())),
        conda:
            "../../envs/evaluate.yaml"
        log:
            LAYOUT.logs() / "grid.log",
        resources:
            mem_mb=8000,
            runtime=60,
        shell:
            "{CXRBENCH} grid --settings {params.settings} {params.cells} --tables-dir {params.tables} "
            "--figures-dir {params.figures} > {log} 2>&1"
