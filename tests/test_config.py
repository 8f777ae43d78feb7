"""The config schema: defaults, clear errors naming the key, and parse-time rejection by Snakemake."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cxrbench.config import REPO_ROOT, ConfigError, is_demo_dataset, load_config, load_schema, validate_config


@pytest.fixture()
def demo_config() -> dict:
    with open(REPO_ROOT / "config.yaml", encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def test_demo_config_validates_and_fills_defaults(demo_config: dict) -> None:
    cfg = validate_config(copy.deepcopy(demo_config))
    assert cfg["training"]["weight_decay"] == 0.0  # schema default, not in config.yaml
    assert cfg["evaluation"]["alpha"] == 0.05
    assert cfg["splits"]["val_fraction"] == 0.1
    assert cfg["datasets"]["vindr"]["reader_merge"] == "majority"


def _walk(schema: dict, path: str = "") -> list[tuple[str, dict]]:
    out = []
    for key, sub in schema.get("properties", {}).items():
        out.append((f"{path}{key}", sub))
        out += _walk(sub, f"{path}{key}.")
    return out


def test_every_schema_key_has_description() -> None:
    schema = load_schema()
    keys = _walk(schema) + [
        (f"$defs.{d}.{k}", s) for d, ds in schema["$defs"].items() for k, s in ds["properties"].items()
    ]
    assert len(keys) > 40
    missing = [k for k, s in keys if not s.get("description")]
    assert missing == []


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c["training"].__setitem__("epochz", 3), "'epochz'"),
        (lambda c: c.__setitem__("sead", 1), "'sead'"),
        (lambda c: c["training"].__setitem__("batch_size", "32"), "training.batch_size"),
        (lambda c: c["preprocess"].__setitem__("mode", "fancy"), "preprocess.mode"),
        (lambda c: c["datasets"]["vindr"].__setitem__("adaptor", "vindr"), "datasets.vindr"),
        (lambda c: c["datasets"]["chexpert"].__setitem__("adapter", "chexpret"), "datasets.chexpert.adapter"),
        (lambda c: c["initialisations"]["mimic_sl"].__setitem__("pretrain_dataset", "nope"), "pretrain_dataset"),
        (lambda c: c["evaluation"].__setitem__("reference_init", "dinov9"), "evaluation.reference_init"),
        (lambda c: c["initialisations"]["mimic_sl"].__setitem__("pretrain_training", {"epocs": 3}),
         "'epocs' under 'initialisations.mimic_sl.pretrain_training'"),
        (lambda c: c["initialisations"]["mimic_sl"].__setitem__("pretrain_training", {"device": "cuda"}),
         "'device' under 'initialisations.mimic_sl.pretrain_training'"),
        (lambda c: c["initialisations"]["mimic_sl"].__setitem__("pretrain_training", {"epochs": 0}),
         "initialisations.mimic_sl.pretrain_training.epochs"),
        (lambda c: c["initialisations"]["random"].__setitem__("pretrain_training", {"epochs": 3}),
         "initialisations.random.pretrain_training' applies only to source 'pipeline'"),
    ],
)
def test_bad_config_names_the_key(demo_config: dict, mutate, expected: str) -> None:
    mutate(demo_config)
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.").replace("'", "'")):
        validate_config(demo_config)


def test_missing_dataset_root_is_rejected_when_not_demo(demo_config: dict, tmp_path: Path) -> None:
    demo_config["demo"]["enabled"] = False
    demo_config["datasets"] = {"chestxray14": {"adapter": "chestxray14", "root": str(tmp_path / "absent")}}
    demo_config["initialisations"].pop("mimic_sl")
    with pytest.raises(ConfigError, match=r"datasets\.chestxray14\.root"):
        validate_config(copy.deepcopy(demo_config))
    # the compute plan of data not yet downloaded: every other check still applies
    assert validate_config(copy.deepcopy(demo_config), require_roots=False)["datasets"]["chestxray14"]["root"] == str(
        tmp_path / "absent"
    )
    demo_config["training"]["epochz"] = 3
    with pytest.raises(ConfigError, match="'epochz'"):
        validate_config(demo_config, require_roots=False)


@pytest.mark.parametrize("key", ["runtime_minutes", "mem_mb"])
def test_removed_training_resources_point_to_the_plan(demo_config: dict, key: str) -> None:
    demo_config["training"][key] = 30
    with pytest.raises(ConfigError, match=rf"'training\.{key}' was removed: .*plan\.safety_factor"):
        validate_config(demo_config)


def test_load_config_rejects_non_mapping(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)


@pytest.mark.slow
def test_snakemake_rejects_bad_config_at_parse_time(demo_config: dict, tmp_path: Path) -> None:
    demo_config["training"]["lrr"] = 0.1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(demo_config))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(bad),
         "--directory", str(tmp_path), "-s", str(REPO_ROOT / "Snakefile")],
        check=False, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
    )
    assert proc.returncode != 0
    assert "'lrr'" in proc.stdout + proc.stderr
    assert "training" in proc.stdout + proc.stderr


def test_missing_root_outside_the_demo_is_rejected_while_demo_is_on(demo_config: dict, tmp_path: Path) -> None:
    """Only roots under demo.root are written by the demo; any other dataset must exist at parse time."""
    demo_config["datasets"]["mine"] = {"adapter": "chestxray14", "root": str(tmp_path / "absent")}
    with pytest.raises(ConfigError, match=r"datasets\.mine\.root"):
        validate_config(demo_config)
    assert is_demo_dataset(demo_config, "vindr") and not is_demo_dataset(demo_config, "mine")


def test_pretrain_training_overrides_only_the_pretraining_recipe(demo_config: dict) -> None:
    from cxrbench.runkey import RunKey
    from cxrbench.training.settings import pretrain_settings, run_settings

    demo_config["initialisations"]["mimic_sl"]["pretrain_training"] = {"epochs": 9, "lr": 0.002}
    cfg = validate_config(demo_config)
    pre = pretrain_settings(cfg, "mimic_sl", "vindr", 32)["training"]
    fine = run_settings(cfg, RunKey("mimic_sl", "vindr", 32))["training"]
    assert (pre["epochs"], pre["lr"]) == (9, 0.002)
    assert (fine["epochs"], fine["lr"]) == (cfg["training"]["epochs"], cfg["training"]["lr"])
    assert {k: v for k, v in pre.items() if k not in ("epochs", "lr")} == {
        k: v for k, v in fine.items() if k not in ("epochs", "lr")}
