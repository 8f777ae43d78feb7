"""The canonical map, presets and overlap subsets against paper-methods.md section 2.3 and section 6."""

from __future__ import annotations

import pandas as pd
import pytest
from cxrbench.datasets import native_vocabulary
from cxrbench.labels import label_presets, overlap_labels, resolve_label_set, source_rules
from cxrbench.labels.canonical import MAP_ADAPTERS, canonical_map

# The study's code names, in code order (paper-methods.md section 2.3), typed in independently of the presets.
STUDY = {
    "study_vindr": ["Cardiomegaly", "Pleural effusion", "Pneumonia", "Atelectasis", "No finding", "Consolidation",
                    "Pneumothorax", "Pleural thickening", "Lung Opacity", "Pulmonary fibrosis", "Nodule/Mass"],
    "study_chestxray14": ["cardiomegaly", "effusion", "pneumonia", "atelectasis", "no_finding", "consolidation",
                          "pneumothorax", "fibrosis", "emphysema", "hernia", "pleural_thickening", "edema", "nodule",
                          "mass"],
    "study_chexpert": ["cardiomegaly", "pleural_effusion", "pneumonia", "atelectasis", "no_finding", "consolidation",
                       "pneumothorax", "lung_opacity", "lung_lesion", "fracture"],
    "study_padchest": ["cardiomegaly", "pleural_effusion", "pneumonia", "atelectasis", "no_finding", "consolidation",
                       "pneumothorax", "emphysema", "hernia", "scoliosis", "congestion", "aortic_elongation",
                       "kyphosis", "COPD_signs", "pleural_thickening", "nodule_mass", "infiltrates"],
    "study_uka": ["cardiomegaly", "congestion", "pleural_effusion_right", "pleural_effusion_left",
                  "pneumonic_infiltrates_right", "pneumonic_infiltrates_left", "atelectasis_right",
                  "atelectasis_left", "healthy"],
}
STUDY["study_mimic"] = STUDY["study_chexpert"]
ADAPTER = {"study_vindr": "vindr", "study_chestxray14": "chestxray14", "study_chexpert": "chexpert",
           "study_mimic": "mimic", "study_padchest": "padchest", "study_uka": "uka"}


@pytest.mark.parametrize("preset", sorted(STUDY))
def test_study_label_sets_names_and_counts(preset: str) -> None:
    p = label_presets()[preset]
    assert p["study_names"] == STUDY[preset]
    assert len(p["labels"]) == len(STUDY[preset]) == {"study_vindr": 11, "study_chestxray14": 14,
                                                      "study_chexpert": 10, "study_mimic": 10,
                                                      "study_padchest": 17, "study_uka": 9}[preset]
    rules = source_rules(ADAPTER[preset], vocabulary=native_vocabulary(ADAPTER[preset]))
    assert [f for f in p["labels"] if f not in rules] == []  # every study label is assessed by its dataset
    cmap = canonical_map()
    for canonical, code_name in zip(p["labels"], p["study_names"], strict=True):
        assert code_name in cmap.loc[canonical, "study_names"].split("|"), (canonical, code_name)


@pytest.mark.parametrize(("target", "n"), [("vindr", 8), ("chestxray14", 7), ("padchest", 7), ("uka", 5)])
def test_mimic_overlap_presets_equal_overlap_labels(target: str, n: int) -> None:
    presets = label_presets()
    overlap = overlap_labels(presets[f"study_{target}"]["labels"], presets["study_mimic"]["labels"])
    assert overlap == presets[f"mimic_overlap_{target}"]["labels"]
    assert len(overlap) == n


def test_uka_overlap_merges_laterality() -> None:
    assert overlap_labels(["pleural_effusion_right", "pleural_effusion_left", "congestion"],
                          ["pleural_effusion", "edema"]) == ["pleural_effusion"]
    assert overlap_labels(["edema", "cardiomegaly"], ["cardiomegaly", "edema"]) == ["edema", "cardiomegaly"]


def test_map_references_only_native_vocabulary() -> None:
    cmap = canonical_map()
    for adapter in MAP_ADAPTERS:
        vocab = native_vocabulary(adapter)
        if vocab is None:
            continue
        for finding, cell in cmap[adapter].items():
            for source in cell.lstrip("~").split("|"):
                assert not source or source in vocab, (adapter, finding, source)


def test_padchest_exact_vs_substring() -> None:
    vocab = native_vocabulary("padchest")
    exact = source_rules("padchest", vocabulary=vocab)
    sub = source_rules("padchest", padchest_matching="substring", vocabulary=vocab)
    assert "subcutaneous emphysema" not in exact["emphysema"].sources
    assert "subcutaneous emphysema" in sub["emphysema"].sources
    assert "abnormal foreign body" in sub["no_finding"].sources  # the study's 'normal' substring pitfall
    assert exact["no_finding"].sources == ("normal",)
    assert {"pseudonodule", "breast mass"} <= set(sub["nodule_or_mass"].sources)
    assert not {"pseudonodule", "breast mass"} & set(exact["nodule_or_mass"].sources)


def test_absent_findings_not_in_rules_and_approximations_flagged() -> None:
    rules = source_rules("chestxray14")
    assert "lung_opacity" not in rules and "support_devices" not in rules
    uka = source_rules("uka")
    assert uka["no_finding"].approximate and uka["pneumonia"].approximate
    assert uka["pleural_effusion"].sources == ("pleural_effusion_right", "pleural_effusion_left")
    assert not uka["cardiomegaly"].approximate


def test_resolve_label_set_errors() -> None:
    rules = source_rules("chexpert")
    assert resolve_label_set("all", rules) == list(rules)
    with pytest.raises(ValueError, match="unknown label set 'study_nope'"):
        resolve_label_set("study_nope", rules)
    with pytest.raises(ValueError, match=r"unknown canonical finding\(s\) \['heartache'\]"):
        resolve_label_set(["cardiomegaly", "heartache"], rules)


def test_map_file_is_well_formed() -> None:
    df = pd.read_csv(canonical_map.__wrapped__.__defaults__[0], dtype=str, keep_default_na=False)
    assert df["canonical"].str.fullmatch(r"[a-z][a-z0-9_]*").all()
    assert set(df.columns) >= {"canonical", "parent", "study_names", *MAP_ADAPTERS, "padchest_substring"}
