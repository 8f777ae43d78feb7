# External validation (docs/outputs.md, "External validation"), when `evaluation.external` is true: every training
# run predicts the test split of every other evaluated dataset at its own size (one light inference job per (run,
# test dataset), reading that dataset's cache), and one `external` job builds the train x test matrix, its paired
# tests on the test dataset's own bootstrap indices, the generalisation gap and the figures. Which pairs share a
# label is known only after harmonisation, so every pair is planned; one without a shared label records that and is
# left out of the matrix. Uses RUNS, CELLS, EVAL_DATASETS and the helpers of train.smk / evaluate.smk.
from cxrbench.evaluation import external as _EXTERNAL
from cxrbench.evaluation.grid import contrasts_from_settings as _contrasts

EXTERNAL = bool(config["evaluation"]["external"]) and len(EVAL_DATASETS) > 1
EXTERNAL_PAIRS = [(key, ds) for key in RUNS for ds in EVAL_DATASETS if ds != key.dataset] if EXTERNAL else []
EXTERNAL_FILES = ("predictions.parquet", "external.json")
# Report caption (workflow/report/<caption>.rst) of each table, and of each figure by name prefix.
_EXTERNAL_CAPTIONS = {
    "label_overlap": "external_label_overlap",
    "external_tests": "external_tests",
    "external_gap": "external_gap_table",
    "external": "external_table",
    "external_auroc_": "external_auroc",
    "external_delta_": "external_delta",
}


def _external_inputs(w) -> dict:
    key = RunKey.from_wildcards(w)
    run = Path(_RUN_DIRS[key])
    return {"run": [str(run / f) for f in RUN_FILES], **_data_inputs(w.test, w.size)}


def external_outputs() -> dict:
    """The external tables (CSV) and figures (PNG in the Snakemake report, plus PDF)."""
    out = {}
    for name in _EXTERNAL.table_names():
        out[f"table_{name}"] = _reported(LAYOUT.tables_dir() / f"{name}.csv", caption=_EXTERNAL_CAPTIONS[name],
                                         category="External validation", subcategory="Tables", labels={"table": name})
    for name in _EXTERNAL.figure_names(INITS, _contrasts(aggregate_settings())):
        caption = "external_gap" if name == "external_gap" else next(
            c for prefix, c in _EXTERNAL_CAPTIONS.items() if prefix.endswith("_") and name.startswith(prefix))
        for ext, path in EVAL_FILES.figure_files(LAYOUT.figures_dir(), name).items():
            out[f"figure_{name}_{ext}"] = (
                _reported(path, caption=caption, category="External validation", subcategory="Figures",
                          labels={"figure": name}) if ext == "png" else str(path)
            )
    return out


def external_targets() -> list:
    """Final external-validation outputs, picked up by all_targets() in common.smk."""
    return [str(p) for p in external_outputs().values()] if EXTERNAL else []


def _external_arguments() -> list:
    """Arguments of `cxrbench external` after the subcommand (written one per line to its argument file)."""
    args = ["--settings", json.dumps(aggregate_settings(), sort_keys=True)]
    for ds in EVAL_DATASETS:
        args += ["--labels", f"{ds}={LAYOUT.labels(ds)}"]
    for key in RUNS:
        args += ["--in-domain", f"{key.relpath().as_posix()}={run_predictions(key)}"]
    for key, ds in EXTERNAL_PAIRS:
        args += ["--external", str(LAYOUT.external_dir(key, ds))]
    for cell in CELLS:
        args += ["--stats", f"{cell.relpath().as_posix()}={LAYOUT.stats_dir(cell)}"]
    args += ["--tables-dir", str(LAYOUT.tables_dir()), "--figures-dir", str(LAYOUT.figures_dir())]
    return args


if EXTERNAL:

    rule external_predict:
        input:
            unpack(_external_inputs),
        output:
            **{f.split(".")[0]: str(LAYOUT.external_root() / RUN_PATTERN / "on-{test}" / f) for f in EXTERNAL_FILES},
        wildcard_constraints:
            test="|".join(EVAL_DATASETS),
        params:
            run=lambda w: _RUN_DIRS[RunKey.from_wildcards(w)],
            key=lambda w: RunKey.from_wildcards(w).relpath().as_posix(),
            cache=lambda w, input: f"--cache-dir {Path(input.cache).parent}" if "cache" in input.keys() else "",
            out=lambda w, output: Path(output.predictions).parent,
        conda:
            "../../envs/train.yaml"
        log:
            LAYOUT.logs() / "external" / RUN_PATTERN / "on-{test}.log",
        threads: _TR["num_workers"] + 1
        # Inference on one test split: light; the plan counts its device time (docs/cluster.md, "Compute plan").
        resources:
            gpu=_TR["gpus"],
            cpus_per_task=_TR["num_workers"] + 1,
            mem_mb=4000,
            runtime=30,
        shell:
            "{CXRBENCH} external-predict --run-dir {params.run} --key {params.key} --labels {input.labels}"
            " --manifest {input.manifest} {params.cache} --out-dir {params.out} --device {_TR[device]}"
            " --num-workers {_TR[num_workers]} --threads {threads} > {log} 2>&1"

    # The argument list grows with the grid (thousands of runs): too long for one shell command, so it goes
    # through a file that `cxrbench external @FILE` reads. Writing it is a local step, not a cluster job.
    localrules:
        external_arguments,

    rule external_arguments:
        output:
            LAYOUT.external_args(),
        params:
            arguments=_external_arguments(),
        log:
            LAYOUT.logs() / "external_arguments.log",
        run:
            Path(output[0]).write_text("\n".join(params.arguments) + "\n", encoding="utf-8")

    rule external:
        input:
            arguments=LAYOUT.external_args(),
            predictions=[str(LAYOUT.external_dir(k, ds) / f) for k, ds in EXTERNAL_PAIRS for f in EXTERNAL_FILES],
            in_domain=[run_predictions(k) for k in RUNS],
            stats=[f for cell in CELLS for f in _stats(LAYOUT.stats_dir(cell)).values()],
            labels=[str(LAYOUT.labels(ds)) for ds in EVAL_DATASETS],
        output:
            **external_outputs(),
        conda:
            "../../envs/evaluate.yaml"
        log:
            LAYOUT.logs() / "external.log",
        threads: 2
        resources:
            mem_mb=8000,
            runtime=60,
        shell:
            "{CXRBENCH} external @{input.arguments} --threads {threads} > {log} 2>&1"
