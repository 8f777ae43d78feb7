# Fine-tuning: one job per (initialisation, dataset); a `pipeline` initialisation adds supervised
# pre-training jobs whose best checkpoint initialises its runs (docs/training.md).
from cxrbench.models.registry import check_all as _weights_problems
from cxrbench.models.registry import init_spec as _init_spec
from cxrbench.models.registry import locate_weights as _locate_weights
from cxrbench.models.registry import weights_problem as _weights_problem
from cxrbench.training.settings import pretrain_run_dir as _pretrain_run_dir
from cxrbench.training.settings import pretrain_settings as _pretrain_settings
from cxrbench.training.settings import pretrain_target as _pretrain_target
from cxrbench.training.settings import run_settings as _run_settings
from cxrbench.training.settings import train_runs as _train_runs

# (init, dataset) pairs that are trained; a pipeline init on its own pre-training dataset is not an arm.
TRAIN_RUNS = _train_runs(config)
RUN_FILES = ("best.pt", "history.csv", "predictions.parquet", "run.json")
_TR = config["training"]


def run_predictions(init: str, ds: str):
    """predictions.parquet of run (init, ds), or None when that run is skipped (pipeline init on its own data)."""
    return str(LAYOUT.run_dir(init, ds) / "predictions.parquet") if (init, ds) in TRAIN_RUNS else None


def train_targets() -> list:
    """Every output of every fine-tuning run."""
    return [str(LAYOUT.run_dir(i, d) / f) for i, d in TRAIN_RUNS for f in RUN_FILES]


def _data_inputs(ds: str) -> dict:
    """Labels, manifest and (when enabled) the packed cache of one dataset."""
    out = {"labels": str(LAYOUT.labels(ds)), "manifest": str(LAYOUT.manifest(ds, VARIANT))}
    if config["preprocess"]["cache"]:
        cache = LAYOUT.cache_dir(ds, VARIANT)
        out["cache"] = [str(cache / f"{s}{ext}") for s in ("train", "val", "test") for ext in (".npy", ".index.parquet")]
    return out


def _weights_input(init: str) -> dict:
    """The hub/file weight file of ``init`` as a job input; stops the workflow if it is not on disk.

    Weights are checked here, in the input functions of the two rules that load them, not while the
    Snakefile parses: Snakemake evaluates input functions only for jobs in the plan, and for all of them
    while it builds the DAG, so labels, preprocessing and caches can be built before the weights arrive,
    while a plan with training still fails before any job starts. A plain missing-input error would only
    name the file; this one carries the fetch command. As an input, replaced weights rerun the job.
    """
    spec = _init_spec(config, init)
    if spec.source not in ("hub", "file"):
        return {}
    hf_home = config["weights"]["hf_home"]
    if _weights_problem(spec, hf_home=hf_home):
        # every missing weight of the config at once, so one fetch round fixes the plan
        raise WorkflowError("Pretrained weights are missing:\n" + "\n".join(_weights_problems(config)))
    return {"weights": str(_locate_weights(spec, hf_home=hf_home))}


def _train_inputs(w) -> dict:
    out = _data_inputs(w.ds)
    spec = _init_spec(config, w.init)
    out.update(_weights_input(w.init))
    if spec.source == "pipeline":
        out["init_checkpoint"] = str(_pretrain_run_dir(LAYOUT, spec, _pretrain_target(spec, w.ds)) / "best.pt")
    return out


def _pretrain_inputs(w) -> dict:
    spec = _init_spec(config, w.init)
    out = _data_inputs(spec.pretrain_dataset)
    out.update(_weights_input(spec.pretrain_init))
    if w.scope != "all-labels":
        out["target_labels"] = str(LAYOUT.labels(w.scope.removeprefix("for-")))
    return out


def _options(input) -> str:
    """Optional command-line inputs of `cxrbench train`."""
    opts = []
    if "cache" in input.keys():
        opts.append(f"--cache-dir {Path(input.cache[0]).parent}")
    if "init_checkpoint" in input.keys():
        opts.append(f"--init-checkpoint {input.init_checkpoint}")
    if "target_labels" in input.keys():
        opts.append(f"--target-labels {input.target_labels}")
    return " ".join(opts)


_RESOURCES = dict(
    gpu=_TR["gpus"],
    cpus_per_task=_TR["num_workers"] + 1,
    mem_mb=_TR["mem_mb"],
    # Retries resume from checkpoint.pt; each attempt gets more wall time.
    runtime=lambda wildcards, attempt: _TR["runtime_minutes"] * attempt,
)
_RUNTIME_OPTS = f"--device {_TR['device']} --num-workers {_TR['num_workers']}"


rule train:
    input:
        unpack(_train_inputs),
    output:
        **{f.split(".")[0]: str(LAYOUT.run_dir("{init}", "{ds}") / f) for f in RUN_FILES},
    params:
        settings=lambda w: settings(_run_settings(config, w.init, w.ds)),
        options=lambda w, input: _options(input),
        out=lambda w: LAYOUT.run_dir(w.init, w.ds),
    conda:
        "../../envs/train.yaml"
    log:
        LAYOUT.logs() / "train" / "{init}" / "{ds}.log",
    benchmark:
        LAYOUT.logs() / "train" / "{init}" / "{ds}.benchmark.tsv"
    threads: _TR["num_workers"] + 1
    resources:
        **_RESOURCES,
    retries: _TR["retries"]
    shell:
        "{CXRBENCH} train --settings {params.settings} --labels {input.labels} --manifest {input.manifest}"
        " {params.options} --out {params.out} " + _RUNTIME_OPTS + " --threads {threads} > {log} 2>&1"


rule pretrain:
    input:
        unpack(_pretrain_inputs),
    output:
        **{f.split(".")[0]: str(LAYOUT.pretrain_dir("{init}", "{pds}") / "{scope}" / f) for f in RUN_FILES},
    wildcard_constraints:
        pds="|".join(DATASETS),
        scope="all-labels|" + "|".join(f"for-{d}" for d in DATASETS),
    params:
        settings=lambda w: settings(
            _pretrain_settings(config, w.init, None if w.scope == "all-labels" else w.scope.removeprefix("for-"))
        ),
        options=lambda w, input: _options(input),
        out=lambda w: LAYOUT.pretrain_dir(w.init, w.pds) / w.scope,
    conda:
        "../../envs/train.yaml"
    log:
        LAYOUT.logs() / "pretrain" / "{init}" / "{pds}" / "{scope}.log",
    benchmark:
        LAYOUT.logs() / "pretrain" / "{init}" / "{pds}" / "{scope}.benchmark.tsv"
    threads: _TR["num_workers"] + 1
    resources:
        **_RESOURCES,
    retries: _TR["retries"]
    shell:
        "{CXRBENCH} train --settings {params.settings} --labels {input.labels} --manifest {input.manifest}"
        " {params.options} --out {params.out} " + _RUNTIME_OPTS + " --threads {threads} > {log} 2>&1"
