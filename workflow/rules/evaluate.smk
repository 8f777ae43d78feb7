# Statistics and publication outputs (docs/outputs.md): one `evaluate` job per dataset (metrics, the
# shared paired bootstrap, pairwise tests), then one `aggregate` job (Benjamini-Hochberg over all
# datasets, tables, figures, results README). File names come from cxrbench.evaluation.outputs.
# Uses TRAIN_RUNS (the fine-tuned (init, ds) pairs) and run_predictions(init, ds) from train.smk.
from cxrbench.evaluation import outputs as EVAL_FILES

EVAL_DATASETS = [ds for ds in DATASETS if any(d == ds for _, d in TRAIN_RUNS)]
PIPELINE_INITS = [i for i in INITS if config["initialisations"][i]["source"] == "pipeline"]


def evaluation_settings() -> dict:
    """What evaluate/aggregate compute from: the evaluation section, the master seed, the inits."""
    return {
        "evaluation": config["evaluation"],
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


def evaluated_inits(ds: str) -> list:
    """Initialisations with a run on dataset ``ds``, in config order."""
    return [init for init, d in TRAIN_RUNS if d == ds]


def _stats(ds: str) -> dict:
    files = EVAL_FILES.stats_files(LAYOUT.stats_dir(ds))
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


def evaluate_targets() -> list:
    """Final evaluation outputs, picked up by all_targets() in common.smk."""
    return [str(p) for p in aggregate_outputs().values()]


rule evaluate:
    input:
        lambda w: [run_predictions(init, w.ds) for init in evaluated_inits(w.ds)],
    output:
        **_stats("{ds}"),
    params:
        settings=settings(evaluation_settings()),
        predictions=lambda w: " ".join(
            "--predictions " + shlex.quote(f"{init}={run_predictions(init, w.ds)}") for init in evaluated_inits(w.ds)
        ),
        out_dir=lambda w: shlex.quote(str(LAYOUT.stats_dir(w.ds))),
    conda:
        "../../envs/evaluate.yaml"
    log:
        LAYOUT.logs() / "evaluate" / "{ds}.log",
    threads: 2
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "{CXRBENCH} evaluate --settings {params.settings} --dataset {wildcards.ds} {params.predictions} "
        "--out-dir {params.out_dir} --threads {threads} > {log} 2>&1"


rule aggregate:
    input:
        [f for ds in EVAL_DATASETS for f in _stats(ds).values()],
    output:
        **aggregate_outputs(),
    params:
        settings=settings(aggregate_settings()),
        stats=" ".join("--stats " + shlex.quote(f"{ds}={LAYOUT.stats_dir(ds)}") for ds in EVAL_DATASETS),
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
