# Publication archive (docs/archive.md): `snakemake archive` packs tables, figures, statistics,
# predictions, run metadata, the resolved config, versions, the Snakemake report, a SHA-256 manifest
# and an RO-Crate into one tarball; never images or source label files, and it fails if a
# patient-identifying DICOM header value appears anywhere in it. Image and patient ids are published as
# HMAC pseudonyms (`archive.identifiers`); the key and the id -> pseudonym table stay at
# `archive.secret`, outside results/ (not outputs of this rule: they must outlive any rerun).
# Not part of `rule all`.

ARCHIVE = LAYOUT.archive_dir() / "cxrbench-results.tar.gz"


# The archive renders the Snakemake report of this run; keep it on the machine that runs Snakemake.
localrules:
    archive,


rule archive:
    input:
        all_targets(),
        # The PHI check reads the source list from each dataset's index (and the preprocessing
        # manifests, which all_targets() already requires, for the source formats).
        [str(LAYOUT.index(ds)) for ds in DATASETS],
    output:
        ARCHIVE,
    params:
        # The resolved config is archived as it is, so any config change rebuilds the archive.
        settings=settings(config),
        snakefile=workflow.main_snakefile,
    conda:
        "../../envs/base.yaml"
    log:
        LAYOUT.logs() / "archive.log",
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "{CXRBENCH} archive --settings {params.settings} --results {config[results]} --snakefile {params.snakefile}"
        " --out {output} > {log} 2>&1"
