"""The study presets: study-strict.yaml validates, differs from study.yaml only in the departure switches, and
sets every switch of the README's departures table to the value the table gives (issue 10 section 5)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from cxrbench.config import validate_config

REPO = Path(__file__).resolve().parents[1]
PRESETS = REPO / "resources" / "presets"

# The keys study-strict.yaml changes, each a row of the README's departures table.
SWITCHES = {
    "datasets.chexpert.views",
    "labels.padchest_matching",
    "labels.padchest_drop",
    "splits.strategy",
    "training.patience",
    "training.selection_metric",
    "training.precision",
    "evaluation.threshold_mode",
}


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((PRESETS / name).read_text(encoding="utf-8"))


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _validated(config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """The config validated with defaults filled, every dataset root pointed at an existing folder."""
    config = copy.deepcopy(config)
    for name, entry in config["datasets"].items():
        entry["root"] = str(tmp_path / name)
        (tmp_path / name).mkdir(exist_ok=True)
    return validate_config(config)


def _diff(a: dict[str, Any], b: dict[str, Any]) -> set[str]:
    fa, fb = _flat(a), _flat(b)
    return {k for k in fa.keys() | fb.keys() if fa.get(k, "<absent>") != fb.get(k, "<absent>")}


def test_strict_validates_and_differs_only_in_switches(tmp_path: Path) -> None:
    study, strict = _load("study.yaml"), _load("study-strict.yaml")
    assert _diff(study, strict) == SWITCHES  # as written
    ok_study, ok_strict = _validated(study, tmp_path), _validated(strict, tmp_path)
    roots = {f"datasets.{ds}.root" for ds in study["datasets"]}
    assert _diff(ok_study, ok_strict) == SWITCHES  # and with the schema's defaults filled in
    assert roots.isdisjoint(SWITCHES)
    assert ok_strict["splits"]["val_fraction"] == ok_study["splits"]["val_fraction"] > 0  # validation stays


def _readme_switches() -> list[tuple[str, str]]:
    """(key, value) of every `key: value` in the switch column of the README's departures table."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    table = text.split("## Where cxrbench departs from the original code", 1)[1].split("\n## ", 1)[0]
    found = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and line.startswith("|"):
            found += re.findall(r"`([a-z_.<>]+): ([^`]+)`", cells[2])
    return found


def test_strict_sets_every_readme_switch_to_the_study_value(tmp_path: Path) -> None:
    switches = _readme_switches()
    keys = {k.replace("<chexpert>", "chexpert") for k, _ in switches}
    assert keys == SWITCHES  # every table switch with a study value is in the preset, and nothing else
    strict = _flat(_validated(_load("study-strict.yaml"), tmp_path))
    for key, value in switches:
        key = key.replace("<chexpert>", "chexpert")
        assert strict[key] == yaml.safe_load(value), key


@pytest.mark.parametrize("name", ["study.yaml", "study-strict.yaml"])
def test_training_settings_of_the_presets(name: str, tmp_path: Path) -> None:
    from cxrbench.training.settings import resolve_training

    tr = resolve_training(_validated(_load(name), tmp_path)["training"])
    strict = name == "study-strict.yaml"
    assert (tr["patience"], tr["selection_metric"], tr["precision"]) == (
        (0, "val_loss", "fp32") if strict else (10, "val_auroc", "bf16"))
    assert tr["normalisation"] == "none" and tr["schedule"] == "none"  # the paper preset in both
