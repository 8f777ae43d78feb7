# Preprocessing: labels.parquet -> shard plan (checkpoint) -> one job per shard of PNGs -> manifest -> cache,
# once per grid size (the {size} wildcard; the variant folder is `<mode>-<size>`).
# See docs/preprocessing.md. A shard job's only input is its membership file; its source images enter as
# `params.fingerprint` (a hash of their paths, sizes and mtimes), so touching or changing one source image
# reruns one shard through the params rerun trigger, and a plan rerun that keeps a shard's members reruns
# nothing. Declaring every image as an input instead cost ~180 us per image at DAG time (2.5 min at 800k).
import hashlib

import pandas as pd

from cxrbench.preprocess.cache import SPLITS as CACHE_SPLITS, cache_paths
from cxrbench.preprocess.shards import source_fingerprint


def preprocess_equalize(ds: str) -> bool:
    """Histogram equalisation in paper mode: the dataset's `equalize`, else off for MIMIC-JPG unless equalize_mimic."""
    entry = config["datasets"][ds]
    if config["preprocess"]["mode"] != "paper":
        return False
    if "equalize" in entry:
        return bool(entry["equalize"])
    if entry["adapter"] == "mimic":
        return bool(config["preprocess"]["equalize_mimic"])
    return True


def shard_settings(ds: str, size: int) -> dict:
    pp = config["preprocess"]
    return {
        "mode": pp["mode"],
        "size": size,
        "equalize": preprocess_equalize(ds),
        "reduced_resolution_decode": pp["reduced_resolution_decode"],
    }


def shard_members(wildcards) -> str:
    """The shard's membership file (written by the plan checkpoint, hence the checkpoint dependency)."""
    checkpoints.shard_plan.get(ds=wildcards.ds, size=wildcards.size)
    return str(LAYOUT.shard_members(wildcards.ds, variant(wildcards.size), wildcards.shard))


# Fingerprints by the membership file's content: every grid size plans the same shards from the same labels, so
# the sizes of a dataset share them and each source image is stat'ed once per invocation, not once per size.
_SHARD_FINGERPRINTS: dict[tuple[str, bytes], str] = {}


def shard_fingerprint(wildcards) -> str:
    """Hash of (source_path, size, mtime) of the shard's members: one stat per image, once per invocation."""
    members = LAYOUT.shard_members(wildcards.ds, variant(wildcards.size), wildcards.shard)
    root = config["datasets"][wildcards.ds]["root"]
    key = (root, hashlib.sha256(members.read_bytes()).digest())
    if key not in _SHARD_FINGERPRINTS:
        _SHARD_FINGERPRINTS[key] = source_fingerprint(members, root=root)
    return _SHARD_FINGERPRINTS[key]


def shard_manifests(wildcards) -> list:
    plan = checkpoints.shard_plan.get(ds=wildcards.ds, size=wildcards.size).output.plan
    shards = sorted(set(pd.read_parquet(plan, columns=["shard"])["shard"].tolist()))
    return [str(LAYOUT.shard_manifest(wildcards.ds, variant(wildcards.size), k)) for k in shards]


def preprocess_targets() -> list:
    """Final preprocessing files of every configured dataset at every grid size (manifest, rejected, cache)."""
    targets = []
    for ds in DATASETS:
        for v in map(variant, AXES.sizes):
            targets += [LAYOUT.manifest(ds, v), LAYOUT.rejected(ds, v)]
            if config["preprocess"]["cache"]:
                for split in CACHE_SPLITS:
                    targets += list(cache_paths(LAYOUT.cache_dir(ds, v), split))
    return targets



checkpoint shard_plan:
    input:
        LAYOUT.labels("{ds}"),
    output:
        plan=LAYOUT.shard_plan("{ds}", VARIANT_PATTERN),
    params:
        settings=settings({"shard_size": config["preprocess"]["shard_size"]}),
        members=lambda w: LAYOUT.shard_members(w.ds, variant(w.size), 0).parent,
    conda:
        "../../envs/preprocess.yaml"
    log:
        LAYOUT.logs() / "preprocess" / f"{{ds}}-{VARIANT_PATTERN}-plan.log",
    resources:
        mem_mb=2000,
    shell:
        "{CXRBENCH} shard-plan --settings {params.settings} --labels {input} --out {output.plan}"
        " --members-dir {params.members} > {log} 2>&1"


rule preprocess_shard:
    input:
        members=shard_members,
    output:
        pngs=directory(LAYOUT.shard_dir("{ds}", VARIANT_PATTERN, "{shard}")),
        manifest=LAYOUT.shard_manifest("{ds}", VARIANT_PATTERN, "{shard}"),
    params:
        settings=lambda w: settings(shard_settings(w.ds, int(w.size))),
        root=lambda w: config["datasets"][w.ds]["root"],
        # Not used by the command: a changed value reruns the shard (Snakemake's params rerun trigger).
        fingerprint=shard_fingerprint,
    threads: config["preprocess"]["threads"]
    resources:
        mem_mb=lambda w, threads: 1000 + 700 * threads,
    conda:
        "../../envs/preprocess.yaml"
    log:
        LAYOUT.logs() / "preprocess" / f"{{ds}}-{VARIANT_PATTERN}-shard-{{shard}}.log",
    shell:
        "{CXRBENCH} preprocess --settings {params.settings} --members {input.members} --root {params.root:q}"
        " --out-dir {output.pngs} --manifest {output.manifest} --threads {threads} > {log} 2>&1"


rule collect_shards:
    input:
        shard_manifests,
    output:
        manifest=LAYOUT.manifest("{ds}", VARIANT_PATTERN),
        rejected=LAYOUT.rejected("{ds}", VARIANT_PATTERN),
    params:
        settings=settings({"max_rejected_fraction": config["preprocess"]["max_rejected_fraction"]}),
    conda:
        "../../envs/preprocess.yaml"
    log:
        LAYOUT.logs() / "preprocess" / f"{{ds}}-{VARIANT_PATTERN}-collect.log",
    resources:
        mem_mb=4000,
    shell:
        "{CXRBENCH} collect-shards --settings {params.settings} --manifests {input} --out {output.manifest}"
        " --rejected {output.rejected} > {log} 2>&1"


rule cache:
    input:
        manifest=LAYOUT.manifest("{ds}", VARIANT_PATTERN),
        labels=LAYOUT.labels("{ds}"),
    output:
        [p for split in CACHE_SPLITS for p in cache_paths(LAYOUT.cache_dir("{ds}", VARIANT_PATTERN), split)],
    params:
        settings=lambda w: settings({"size": int(w.size)}),
        out_dir=lambda w: LAYOUT.cache_dir(w.ds, variant(w.size)),
    conda:
        "../../envs/preprocess.yaml"
    log:
        LAYOUT.logs() / "preprocess" / f"{{ds}}-{VARIANT_PATTERN}-cache.log",
    resources:
        mem_mb=2000,
    shell:
        "{CXRBENCH} cache --settings {params.settings} --labels {input.labels} --manifest {input.manifest}"
        " --out-dir {params.out_dir} > {log} 2>&1"
