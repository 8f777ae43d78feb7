# Native label files -> index.parquet (adapter) -> labels.parquet (harmonised, split, validated).
from cxrbench.datasets import label_files as _adapter_label_files


def dataset_label_files(ds: str) -> list:
    """The native label/metadata files the dataset's adapter reads (the index rule's inputs)."""
    entry = config["datasets"][ds]
    return [str(p) for p in _adapter_label_files(entry["adapter"], Path(entry["root"]), entry)]


rule index:
    input:
        lambda w: dataset_label_files(w.ds),
    output:
        LAYOUT.index("{ds}"),
    params:
        settings=lambda w: settings(dataset_settings(w.ds)),
    conda:
        "../../envs/base.yaml"
    log:
        LAYOUT.logs() / "index" / "{ds}.log",
    resources:
        mem_mb=4000,  # the largest index (CheXpert, 224k rows) stays well under this
        runtime=20,
    shell:
        "{CXRBENCH} index --settings {params.settings} --out {output} > {log} 2>&1"


rule harmonise:
    input:
        LAYOUT.index("{ds}"),
    output:
        labels=LAYOUT.labels("{ds}"),
        summary_csv=LAYOUT.labels_summary("{ds}", "csv"),
        summary_md=LAYOUT.labels_summary("{ds}", "md"),
    params:
        settings=lambda w: settings(dataset_settings(w.ds)),
    conda:
        "../../envs/base.yaml"
    log:
        LAYOUT.logs() / "harmonise" / "{ds}.log",
    resources:
        mem_mb=4000,
        runtime=20,
    shell:
        "{CXRBENCH} harmonise --settings {params.settings} --index {input} --out {output.labels} > {log} 2>&1"
