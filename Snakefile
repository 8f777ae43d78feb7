# cxrbench: the study's comparison of network initialisations for chest-radiograph ViTs, as a workflow.
# Stages live in workflow/rules/<stage>.smk; all logic is in the `cxrbench` package (workflow/cxrbench).

from snakemake.utils import min_version

min_version("9.12")


# The shipped demo config.yaml is read only when no --configfile is named: a named file stands alone on the
# schema defaults, so it never inherits the demo's datasets or initialisations. --config overrides apply
# on top of either (Snakemake re-applies them after this file; README, "Configuration").
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/labels.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/external.smk"
include: "workflow/rules/archive.smk"


rule all:
    input:
        all_targets(),
    default_target: True


# Before the first job (never in dry runs): stop a SLURM run started where there is no sbatch, then print the
# compute plan when training is pending (both need the built DAG or the chosen executor, so not at parse time).
onstart:
    require_sbatch()
    announce_plan()


# End-of-run summary on stderr: where the outputs are, the headline numbers, what was quarantined.
onsuccess:
    import sys
    from cxrbench.evaluation.summary import run_summary

    print(run_summary(LAYOUT, datasets=DATASETS, inits=INITS, variant=PRIMARY_VARIANT,
                      pretrain_datasets=aggregate_settings()["pretrain_datasets"],
                      n_resamples=config["evaluation"]["n_bootstrap"]), file=sys.stderr)
