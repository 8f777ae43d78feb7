# Synthetic demo datasets in the six native layouts (only when demo.enabled).


def demo_label_files() -> list:
    """The native label files of every configured dataset that lives under the demo root."""
    root = Path(config["demo"]["root"]).resolve()
    files = []
    for ds in DATASETS:
        ds_root = Path(config["datasets"][ds]["root"]).resolve()
        if ds_root.is_relative_to(root):
            files += [str(f) for f in dataset_label_files(ds)]
    return files


if config["demo"]["enabled"]:

    rule demo_data:
        output:
            demo_label_files(),
            manifest=Path(config["demo"]["root"]) / "demo-manifest.json",
        params:
            settings=settings(config["demo"]),
        conda:
            "../../envs/base.yaml"
        log:
            LAYOUT.logs() / "demo_data.log",
        # One process per dataset; Snakemake lowers this to the cores it has.
        threads: 6
        shell:
            "{CXRBENCH} demo-data --settings {params.settings} --out {config[demo][root]} --workers {threads}"
            " > {log} 2>&1"
