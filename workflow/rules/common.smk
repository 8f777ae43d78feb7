# Shared by every rule file: config validation, the results layout and the config grid.
import json
import re
import shlex
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))  # the package, even when not pip-installed

from cxrbench.config import ConfigError, validate_config
from cxrbench.paths import CELL_PATTERN, RUN_PATTERN, Layout
from cxrbench.runkey import CellKey, RunKey, format_fraction, grid_axes

try:
    validate_config(config)
except ConfigError as exc:
    raise WorkflowError(f"Invalid configuration:\n{exc}") from None

LAYOUT = Layout(config["results"])
DATASETS = list(config["datasets"])
INITS = list(config["initialisations"])
# The experiment grid (docs/training.md, "The experiment grid"); every axis has one value without `grid`.
AXES = grid_axes(config)
# The preprocessing variant of a size (`<mode>-<size>`); VARIANT_PATTERN holds the {size} wildcard.
VARIANT_PATTERN = Layout.variant(config["preprocess"]["mode"], "{size}")
PRIMARY_VARIANT = Layout.variant(config["preprocess"]["mode"], AXES.sizes[0])


def variant(size) -> str:
    return Layout.variant(config["preprocess"]["mode"], size)

# Rules run the package from this checkout; PYTHONPATH is set inline because Snakemake strips it from
# the environment of conda jobs, and this also works without `pip install`. Without conda the jobs use
# the interpreter running Snakemake (a venv need not be activated); with --sdm conda, the env's python.
from snakemake.settings.types import DeploymentMethod

_PYTHON = "python" if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method else sys.executable
CXRBENCH = "PYTHONPATH={} {} -m cxrbench.cli".format(
    shlex.quote(str(Path(workflow.basedir) / "workflow")), shlex.quote(_PYTHON)
)


def require_sbatch() -> None:
    """Stop before the first submission when the SLURM executor runs where there is no `sbatch`.

    The executor is chosen after the Snakefile is parsed (`workflow.executor_plugin` is None then), so this
    runs in the Snakefile's `onstart`, which Snakemake calls after building the plan and before scheduling any
    job (never in dry runs). Without it the plugin fails each submission ("No such file or directory: 'sacct'")
    and retries.
    """
    plugin = workflow.executor_plugin
    if plugin is not None and plugin.name == "slurm" and shutil.which("sbatch") is None:
        raise WorkflowError(
            "sbatch not found: this profile needs a SLURM login node. Run `snakemake --profile slurm` where "
            "`sbatch` is on PATH, or use `--profile workstation` to run on this machine (docs/cluster.md)."
        )


wildcard_constraints:
    ds="|".join(DATASETS),
    init="|".join(INITS),
    shard=r"\d+",
    size="|".join(str(s) for s in AXES.sizes),
    regime="|".join(AXES.regimes),
    fraction="|".join(re.escape(format_fraction(f)) for f in AXES.label_fractions),
    seed="|".join(str(s) for s in AXES.seeds),


def settings(value) -> str:
    """One JSON param, shell-quoted: the exact settings a stage uses (changing them reruns it)."""
    return shlex.quote(json.dumps(value, sort_keys=True))


def dataset_settings(ds: str) -> dict:
    """Everything the index and harmonise stages need about one dataset, defaults resolved."""
    entry = dict(config["datasets"][ds])
    return {
        "name": ds,
        "dataset": entry,
        "labels": config["labels"],
        "splits": config["splits"],
        "seed": config["seed"],
    }


def all_targets() -> list:
    """Final outputs of every stage present in the workflow."""
    targets = [LAYOUT.labels(ds) for ds in DATASETS]
    for name in ("preprocess_targets", "train_targets", "evaluate_targets", "external_targets"):
        fn = globals().get(name)
        if fn is not None:
            targets += fn()
    return [str(t) for t in targets]
