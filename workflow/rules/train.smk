# Training: one job per run of the grid (RunKey: init, dataset, size, regime, label fraction, seed); a `pipeline`
# initialisation adds supervised pre-training jobs (one per size and label scope) whose best checkpoint
# initialises its runs; a label fraction below 1 adds one `fractions` job per dataset, the linear_probe regime one
# `features` job per (init, dataset, size) (docs/training.md, "The experiment grid").
import functools

from cxrbench.models.registry import check_all as _weights_problems
from cxrbench.models.registry import init_spec as _init_spec
from cxrbench.models.registry import locate_weights as _locate_weights
from cxrbench.models.registry import weights_problem as _weights_problem
from cxrbench.plan.estimates import resource_table as _resource_table
from cxrbench.plan.estimates import start_summary as _start_summary
from cxrbench.preprocess.cache import cache_paths as _cache_paths
from cxrbench.runkey import grid_runs as _grid_runs
from cxrbench.training.settings import derive_seed as _derive_seed
from cxrbench.training.settings import features_settings as _features_settings
from cxrbench.training.settings import pretrain_run_dir as _pretrain_run_dir
from cxrbench.training.settings import pretrain_settings as _pretrain_settings
from cxrbench.training.settings import pretrain_target as _pretrain_target
from cxrbench.training.settings import run_settings as _run_settings

# Every training run, in config order; a pipeline init on its own pre-training dataset is not an arm.
RUNS = _grid_runs(config)
RUN_FILES = ("best.pt", "history.csv", "predictions.parquet", "run.json")
FEATURE_FILES = tuple(f"{split}{ext}" for split in ("train", "val", "test") for ext in (".npy", ".index.parquet"))
_TR = config["training"]
# Computed once: with the full grid there are thousands of jobs, and input functions run once per job.
_SPECS = {init: _init_spec(config, init) for init in INITS}
_RUN_DIRS = {key: str(LAYOUT.run_dir(key)) for key in RUNS}


def run_predictions(key: RunKey) -> str:
    """predictions.parquet of the run ``key``."""
    return f"{_RUN_DIRS[key]}/predictions.parquet"


def train_targets() -> list:
    """Every output of every training run."""
    return [f"{_RUN_DIRS[key]}/{f}" for key in RUNS for f in RUN_FILES]


# One file, written last, stands for each folder a job reads that one job writes whole (the cache of a dataset
# and size, a features folder): it orders the jobs and carries the folder's mtime. Declaring all six files of each
# instead costs about 10% of the DAG time of the full grid (bench/dag_scale.py).
FEATURES_MARKER = FEATURE_FILES[-1]


@functools.cache
def _data_inputs(ds: str, size: str) -> dict:
    """Labels, manifest and (when enabled) the packed cache of one dataset at one size."""
    out = {"labels": str(LAYOUT.labels(ds)), "manifest": str(LAYOUT.manifest(ds, variant(size)))}
    if config["preprocess"]["cache"]:
        out["cache"] = str(_cache_paths(LAYOUT.cache_dir(ds, variant(size)), "test")[1])
    return out


def _weights_input(init: str) -> dict:
    """The hub/file weight file of ``init`` as a job input; stops the workflow if it is not on disk.

    Weights are checked here, in the input functions of the rules that load them, not while the
    Snakefile parses: Snakemake evaluates input functions only for jobs in the plan, and for all of them
    while it builds the DAG, so labels, preprocessing and caches can be built before the weights arrive,
    while a plan with training still fails before any job starts. A plain missing-input error would only
    name the file; this one carries the fetch command. As an input, replaced weights rerun the job.
    """
    spec = _SPECS[init]
    if spec.source not in ("hub", "file"):
        return {}
    hf_home = config["weights"]["hf_home"]
    if _weights_problem(spec, hf_home=hf_home):
        # every missing weight of the config at once, so one fetch round fixes the plan
        raise WorkflowError("Pretrained weights are missing:\n" + "\n".join(_weights_problems(config)))
    return {"weights": str(_locate_weights(spec, hf_home=hf_home))}


@functools.cache
def _init_inputs(init: str, ds: str, size: str) -> dict:
    """What initialises a model of ``init`` for dataset ``ds``: the weight file or the pre-training checkpoint."""
    spec = _SPECS[init]
    out = _weights_input(init)
    if spec.source == "pipeline":
        out["init_checkpoint"] = str(_pretrain_run_dir(LAYOUT, spec, _pretrain_target(spec, ds), size) / "best.pt")
    return out


def _train_inputs(w) -> dict:
    key = RunKey.from_wildcards(w)
    out = {**_data_inputs(key.dataset, w.size), **_init_inputs(key.init, key.dataset, w.size)}
    if key.fraction < 1:
        out["fractions"] = str(LAYOUT.fractions(key.dataset))
    if key.regime == "linear_probe":
        out["features"] = str(LAYOUT.features_dir(key.init, key.dataset, key.size) / FEATURES_MARKER)
    return out


def _features_inputs(w) -> dict:
    return {**_data_inputs(w.ds, w.size), **_init_inputs(w.init, w.ds, w.size)}


def _pretrain_inputs(w) -> dict:
    spec = _SPECS[w.init]
    out = {**_data_inputs(spec.pretrain_dataset, w.size), **_weights_input(spec.pretrain_init)}
    if w.scope != "all-labels":
        out["target_labels"] = str(LAYOUT.labels(w.scope.removeprefix("for-")))
    return out


def _options(input) -> str:
    """Optional command-line inputs of `cxrbench train` / `cxrbench features` (each only where it is an input)."""
    opts = []
    if "cache" in input.keys():
        opts.append(f"--cache-dir {Path(input.cache).parent}")
    if "init_checkpoint" in input.keys():
        opts.append(f"--init-checkpoint {input.init_checkpoint}")
    if "target_labels" in input.keys():
        opts.append(f"--target-labels {input.target_labels}")
    if "fractions" in input.keys():
        opts.append(f"--fractions {input.fractions}")
    if "features" in input.keys():
        opts.append(f"--features-dir {Path(input.features).parent}")
    return " ".join(opts)


@functools.cache
def _planned() -> dict:
    """SLURM runtime and mem_mb of every train, pretrain and features job, from one plan of the config.

    Built at the first resource evaluation, at the latest in `onstart` (announce_plan), and looked up per job:
    resources are evaluated per job and again after each upstream job finishes.
    """
    return _resource_table(config)


def _planned_resources(plan_key) -> dict:
    """Resources of a planned rule; ``plan_key(wildcards)`` names its job in the plan (cxrbench.plan.resource_table)."""
    limit = config["plan"]["partition_limit_minutes"]
    return dict(
        gpu=_TR["gpus"],
        cpus_per_task=_TR["num_workers"] + 1,
        mem_mb=lambda wildcards: _planned()[plan_key(wildcards)]["mem_mb"],
        # Retries resume from checkpoint.pt; attempt k gets k times the planned time, within the partition limit.
        runtime=lambda wildcards, attempt: min(_planned()[plan_key(wildcards)]["runtime"] * attempt, limit),
    )


def _scope_target(scope: str):
    """The pre-training target of a `scope` wildcard (None: all labels)."""
    return None if scope == "all-labels" else scope.removeprefix("for-")


def announce_plan() -> None:
    """Print the compute plan on stderr when a planned job is pending (from `onstart`: never in dry runs)."""
    text = _start_summary(config, workflow.dag)
    if text:
        print(text, file=sys.stderr)


_RUNTIME_OPTS = f"--device {_TR['device']} --num-workers {_TR['num_workers']}" + (
    " --grad-checkpointing" if _TR["grad_checkpointing"] else ""
)


rule train:
    input:
        unpack(_train_inputs),
    output:
        **{f.split(".")[0]: str(LAYOUT.runs_root() / RUN_PATTERN / f) for f in RUN_FILES},
    params:
        settings=lambda w: settings(_run_settings(config, RunKey.from_wildcards(w))),
        options=lambda w, input: _options(input),
        out=lambda w: _RUN_DIRS[RunKey.from_wildcards(w)],
    conda:
        "../../envs/train.yaml"
    log:
        LAYOUT.logs() / "train" / f"{RUN_PATTERN}.log",
    benchmark:
        LAYOUT.logs() / "train" / f"{RUN_PATTERN}.benchmark.tsv"
    threads: _TR["num_workers"] + 1
    resources:
        **_planned_resources(lambda w: ("train", RunKey.from_wildcards(w))),
    retries: _TR["retries"]
    shell:
        "{CXRBENCH} train --settings {params.settings} --labels {input.labels} --manifest {input.manifest}"
        " {params.options} --out {params.out} " + _RUNTIME_OPTS + " --threads {threads} > {log} 2>&1"


rule pretrain:
    input:
        unpack(_pretrain_inputs),
    output:
        **{
            f.split(".")[0]: str(LAYOUT.pretrain_run_dir("{init}", "{pds}", "{size}", "{scope}") / f)
            for f in RUN_FILES
        },
    wildcard_constraints:
        pds="|".join(DATASETS),
        scope="all-labels|" + "|".join(f"for-{d}" for d in DATASETS),
    params:
        settings=lambda w: settings(_pretrain_settings(config, w.init, _scope_target(w.scope), int(w.size))),
        options=lambda w, input: _options(input),
        out=lambda w: LAYOUT.pretrain_run_dir(w.init, w.pds, w.size, w.scope),
    conda:
        "../../envs/train.yaml"
    log:
        LAYOUT.logs() / "pretrain" / "{init}" / "{pds}" / "{size}px" / "{scope}.log",
    benchmark:
        LAYOUT.logs() / "pretrain" / "{init}" / "{pds}" / "{size}px" / "{scope}.benchmark.tsv"
    threads: _TR["num_workers"] + 1
    resources:
        **_planned_resources(lambda w: ("pretrain", w.init, _scope_target(w.scope), int(w.size))),
    retries: _TR["retries"]
    shell:
        "{CXRBENCH} train --settings {params.settings} --labels {input.labels} --manifest {input.manifest}"
        " {params.options} --out {params.out} " + _RUNTIME_OPTS + " --threads {threads} > {log} 2>&1"


# Nested label-fraction subsets of each dataset's train split, drawn once for every fraction of the grid.
rule fractions:
    input:
        LAYOUT.labels("{ds}"),
    output:
        fractions=LAYOUT.fractions("{ds}"),
        counts=LAYOUT.fraction_counts("{ds}"),
    params:
        fractions=",".join(format_fraction(f) for f in sorted(AXES.label_fractions)),
        seed=lambda w: _derive_seed(config["seed"], "fractions", w.ds),
    conda:
        "../../envs/base.yaml"
    log:
        LAYOUT.logs() / "fractions" / "{ds}.log",
    resources:
        mem_mb=2000,
    shell:
        "{CXRBENCH} fractions --labels {input} --fractions {params.fractions} --seed {params.seed}"
        " --out {output.fractions} --counts {output.counts} > {log} 2>&1"


# Frozen backbone features for the linear probes of one (init, dataset, size), computed once for every seed and
# label fraction.
rule features:
    input:
        unpack(_features_inputs),
    output:
        **{
            f.replace(".", "_"): str(LAYOUT.features_dir("{init}", "{ds}", "{size}") / f)
            for f in FEATURE_FILES
        },
    params:
        settings=lambda w: settings(_features_settings(config, w.init, w.ds, int(w.size))),
        options=lambda w, input: _options(input),
        out=lambda w: LAYOUT.features_dir(w.init, w.ds, w.size),
    conda:
        "../../envs/train.yaml"
    log:
        LAYOUT.logs() / "features" / "{init}" / "{ds}" / "{size}px.log",
    threads: _TR["num_workers"] + 1
    resources:
        **_planned_resources(lambda w: ("features", w.init, w.ds, int(w.size))),
    retries: _TR["retries"]
    shell:
        "{CXRBENCH} features --settings {params.settings} --labels {input.labels} --manifest {input.manifest}"
        " {params.options} --out {params.out} --device " + _TR["device"] + " --threads {threads} > {log} 2>&1"
