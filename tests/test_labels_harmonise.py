"""Harmonisation: canonical mapping, uncertainty policies, view filter, exclusions, splits, schema, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from cxrbench.datasets import build_index
from cxrbench.labels import HarmoniseError, LabelsSchemaError, SplitError, harmonise, read_labels, write_labels
from cxrbench.labels.harmonise import apply_uncertainty, combine_sources, existing_files
from cxrbench.labels.splits import assign_splits, check_disjoint
from test_datasets_fixtures import (
    CHEX_LABELS,
    chexpert_row,
    nih_rows,
    padchest_row,
    settings,
    touch_images,
    uka_row,
    write_chexpert,
    write_nih,
    write_padchest,
    write_uka,
)


def test_combine_sources_or_semantics() -> None:
    v = np.array([[1, 0], [0, -1], [0, 0], [np.nan, 0], [np.nan, np.nan], [-1, 1]], dtype="float32")
    np.testing.assert_array_equal(combine_sources(v), [1, -1, 0, 0, np.nan, 1])


@pytest.mark.parametrize(("policy", "blank", "expected"), [
    ("u_zeros", "negative", [1, 0, 0, 0]),
    ("u_ones", "negative", [1, 0, 1, 0]),
    ("u_ignore", "negative", [1, 0, np.nan, 0]),
    ("u_ignore", "missing", [1, 0, np.nan, np.nan]),
])
def test_uncertainty_policies(policy, blank, expected) -> None:
    out = apply_uncertainty(np.array([1, 0, -1, np.nan], dtype="float32"), policy=policy, not_mentioned=blank)
    np.testing.assert_array_equal(out, expected)


def _chexpert(tmp_path: Path) -> dict:
    write_chexpert(tmp_path, [
        chexpert_row("train", 1, 1, "view1_frontal", "Frontal", "AP", Cardiomegaly=-1.0, Edema=1.0),
        chexpert_row("train", 1, 1, "view2_lateral", "Lateral", None, Cardiomegaly=-1.0),
        chexpert_row("train", 2, 1, "view1_frontal", "Frontal", "PA", Cardiomegaly=1.0, Edema=-1.0),
        chexpert_row("train", 3, 1, "view1_frontal", "Frontal", "PA", No_Finding=1.0),
    ], [chexpert_row("valid", 64541, 1, "view1_frontal", "Frontal", "PA", Cardiomegaly=0.0)])
    return settings("chexpert", tmp_path, label_set=["cardiomegaly", "edema", "no_finding", "hernia"])


def test_chexpert_policies_views_and_absent_findings(tmp_path: Path) -> None:
    s = _chexpert(tmp_path)
    h = harmonise(build_index(s), s)
    df = h.labels.set_index("image_id")
    assert h.exclusions == {"view_not_kept": 1}
    assert list(df.columns[df.columns.str.startswith("y_")]) == ["y_cardiomegaly", "y_edema", "y_no_finding",
                                                                 "y_hernia"]
    assert df.loc["patient00001_study1_view1_frontal", "y_cardiomegaly"] == 0  # u_zeros
    assert df.loc["patient00003_study1_view1_frontal", "y_cardiomegaly"] == 0  # blank -> 0 (the study)
    assert df["y_hernia"].isna().all() and h.not_assessed == ["hernia"]  # absent finding: NaN, never 0
    assert df["raw_Cardiomegaly"].isna().sum() == 1  # raw tri-state kept
    s["labels"].update(uncertainty="u_ignore", not_mentioned="missing")
    df = harmonise(build_index(s), s).labels.set_index("image_id")
    assert np.isnan(df.loc["patient00001_study1_view1_frontal", "y_cardiomegaly"])
    assert np.isnan(df.loc["patient00003_study1_view1_frontal", "y_cardiomegaly"])
    s["dataset"]["uncertainty"] = "u_ones"  # per-dataset override wins
    df = harmonise(build_index(s), s).labels.set_index("image_id")
    assert df.loc["patient00001_study1_view1_frontal", "y_cardiomegaly"] == 1
    s["dataset"]["views"] = ["PA", "AP", "LATERAL"]
    assert len(harmonise(build_index(s), s).labels) == 5


def test_drop_uncertain_in_set_counts_reason(tmp_path: Path) -> None:
    s = _chexpert(tmp_path)
    s["labels"]["drop_uncertain_in"] = ["edema"]  # not in the label set: still evaluated
    s["dataset"]["label_set"] = ["cardiomegaly"]
    h = harmonise(build_index(s), s)
    assert h.exclusions == {"view_not_kept": 1, "uncertain_in_drop_set": 1}
    assert "patient00002_study1_view1_frontal" not in set(h.labels["image_id"])


def test_missing_images_counted_and_tolerance(tmp_path: Path) -> None:
    rows = nih_rows(10, 2)
    write_nih(tmp_path, rows, test={r[0] for r in rows[:4]})
    touch_images(tmp_path, [f"images/{r[0]}" for r in rows[1:]])
    s = settings("chestxray14", tmp_path, label_set="study_chestxray14")
    idx = build_index(s)
    exists = lambda p: existing_files(tmp_path, p)
    with pytest.raises(HarmoniseError, match=r"1 of 20 listed images are missing.*images/00000001_000.png"):
        harmonise(idx, s, exists=exists)
    s["labels"]["max_missing_image_fraction"] = 0.05
    h = harmonise(idx, s, exists=exists)
    assert h.exclusions == {"image_missing": 1} and len(h.labels) == 19


def test_existing_files_one_scan_per_folder(tmp_path: Path) -> None:
    touch_images(tmp_path, ["a/x.png", "a/y.png", "b/c/z.png"])
    (tmp_path / "a" / "d.png").mkdir()
    got = existing_files(tmp_path, ["a/x.png", "a/q.png", "b/c/z.png", "nope/z.png", "a/d.png", "a/y.png"])
    assert list(got) == [True, False, True, False, False, True]


def _frame(n_patients=300, seed=0):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 6, n_patients)
    pid = np.repeat([f"p{i}" for i in range(n_patients)], counts)
    return pd.DataFrame({"patient_id": pid, "split_official": pd.Series([None] * len(pid), dtype="str")})


def test_derived_splits_deterministic_order_independent_and_disjoint() -> None:
    df = _frame(5000)
    kw = {"seed": 11, "name": "padchest", "test_fraction": 0.2, "val_fraction": 0.1, "use_official_test": True}
    split, source = assign_splits(df, **kw)
    assert set(source) == {"derived"}
    frac = pd.Series(split).value_counts(normalize=True)
    # fractions hold in expectation; 0.02 is about 3 standard deviations of the image share at 5000 patients
    assert abs(frac["test"] - 0.2) < 0.02 and abs(frac["val"] - 0.08) < 0.02  # val = 10 % of the 80 % pool
    perm = np.random.default_rng(1).permutation(len(df))
    split_perm, _ = assign_splits(df.iloc[perm].reset_index(drop=True), **kw)
    a = dict(zip(df["patient_id"], split, strict=True))
    b = dict(zip(df["patient_id"].iloc[perm], split_perm, strict=True))
    assert a == b  # independent of row order
    check_disjoint(df["patient_id"], pd.Series(split), where="t")
    other, _ = assign_splits(df, **{**kw, "seed": 12})
    assert (other != split).any()
    other_name, _ = assign_splits(df, **{**kw, "name": "uka"})
    assert (other_name != split).any()


@pytest.mark.parametrize("official", [False, True])
def test_adding_or_removing_patients_moves_no_other(official: bool) -> None:
    """A patient's split depends on (seed, name, its id) only (issue 10 section 6: removing 100 PadChest
    images used to move 9 surviving images to another split)."""
    df = _frame(2000)
    if official:  # official test list: only the val draw is derived
        is_test = df["patient_id"].str[1:].astype(int) % 5 == 0
        df["split_official"] = pd.Series(np.where(is_test, "test", "train"), dtype="str")
    kw = {"seed": 3, "name": "padchest", "test_fraction": 0.2, "val_fraction": 0.1, "use_official_test": True}
    base = dict(zip(df["patient_id"], assign_splits(df, **kw)[0], strict=True))
    rng = np.random.default_rng(0)
    gone = set(rng.choice(df["patient_id"].unique(), 100, replace=False))
    fewer = df[~df["patient_id"].isin(gone)].reset_index(drop=True)
    extra = _frame(60).assign(patient_id=lambda d: "new" + d["patient_id"])
    if official:
        extra["split_official"] = pd.Series(["train"] * len(extra), dtype="str")
    for changed in (fewer, pd.concat([df, extra], ignore_index=True), pd.concat([extra, fewer], ignore_index=True)):
        after = dict(zip(changed["patient_id"], assign_splits(changed, **kw)[0], strict=True))
        moved = {p for p in after if p in base and after[p] != base[p]}
        assert not moved, f"{len(moved)} patient(s) changed split, e.g. {sorted(moved)[:3]}"


def test_official_test_kept_and_study_resplit() -> None:
    df = _frame(100)
    official = np.where(df["patient_id"].str[1:].astype(int) % 4 == 0, "test", "train")
    df["split_official"] = pd.Series(official, dtype="str")
    split, source = assign_splits(df, seed=1, name="x", test_fraction=0.2, val_fraction=0.1, use_official_test=True)
    np.testing.assert_array_equal(split == "test", official == "test")
    assert set(source[split == "test"]) == {"official"} and set(source[split == "val"]) == {"derived"}
    split2, _ = assign_splits(df, seed=1, name="x", test_fraction=0.2, val_fraction=0.1, use_official_test=False)
    assert not np.array_equal(split2 == "test", official == "test")


def test_official_test_set_excluded_entirely_is_an_error(tmp_path: Path) -> None:
    """CheXpert test.csv without view columns: frontal images get view OTHER, which the default views drop;
    that must not silently turn into a test set derived from training images."""
    write_chexpert(tmp_path, [chexpert_row("train", i, 1, "view1_frontal", "Frontal", "PA") for i in range(1, 9)],
                   [chexpert_row("valid", 20, 1, "view1_frontal", "Frontal", "AP")])
    test = pd.DataFrame([chexpert_row("test", 30 + i, 1, "view1_frontal", "Frontal", "PA", Cardiomegaly=i % 2)
                         for i in range(4)], columns=["Path", *CHEX_LABELS])  # no Sex/Age/view columns
    test.to_csv(tmp_path / "test.csv", index=False)
    s = settings("chexpert", tmp_path, label_set=["cardiomegaly"])
    idx = build_index(s)
    with pytest.raises(HarmoniseError, match=r"all 4 official test images are excluded \({'view_not_kept': 4}\)"):
        harmonise(idx, s)
    s["dataset"]["views"] = ["PA", "AP", "AP_SUPINE", "OTHER"]
    y = harmonise(idx, s).labels
    assert (y["split"] == "test").sum() == 4 and set(y.loc[y["split"] == "test", "split_source"]) == {"official"}


def test_patient_overlap_fails_hard(tmp_path: Path) -> None:
    with pytest.raises(SplitError, match=r"1 patient\(s\) appear in more than one split, e.g. 'p1'"):
        check_disjoint(pd.Series(["p1", "p1", "p2"]), pd.Series(["train", "test", "test"]), where="ds")
    # official lists that put one patient in both train and test
    rows = nih_rows(3, 2)
    write_nih(tmp_path, rows, test={rows[0][0]})
    s = settings("chestxray14", tmp_path, label_set="study_chestxray14")
    with pytest.raises(SplitError, match=r"patient\(s\) appear in more than one split, e.g. '1'"):
        harmonise(build_index(s), s)


def test_uka_laterality_and_merged_labels(tmp_path: Path) -> None:
    write_uka(tmp_path, [uka_row(0, 7, "train", {"pleural_effusion_right": 3}),
                         uka_row(1, 8, "test", {"pleural_effusion_left": 4, "pneumonic_infiltrates_left": 3},
                                 healthy=0),
                         uka_row(2, 9, "test", {}, healthy=1)])
    s = settings("uka", tmp_path, label_set=["pleural_effusion_right", "pleural_effusion", "pneumonia",
                                             "no_finding"])
    h = harmonise(build_index(s), s)
    y = h.labels[[c for c in h.labels if c.startswith("y_")]].to_numpy()
    np.testing.assert_array_equal(y, [[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]])
    assert h.approximate == ["pneumonia", "no_finding"]
    assert "raw_grade_pleural_effusion_right" in h.labels


def test_study_strategy_keeps_the_uka_institutional_split(tmp_path: Path) -> None:
    """paper-methods 2.1: the study re-split CheXpert, MIMIC and PadChest, but kept UKA's own split."""
    rows = [uka_row(i, i, "test" if i % 3 == 0 else "train", {}) for i in range(30)]
    write_uka(tmp_path, rows)
    s = settings("uka", tmp_path, label_set=["cardiomegaly"])
    s["splits"] = {"strategy": "study", "test_fraction": 0.5}
    y = harmonise(build_index(s), s).labels
    assert list(y["split"] == "test") == [r["split"] == "test" for r in rows]


def test_padchest_matching_modes(tmp_path: Path) -> None:
    write_padchest(tmp_path, [padchest_row(0, 1, "PA", "['subcutaneous emphysema']"),
                              padchest_row(1, 2, "PA", "['emphysema', 'pseudonodule']"),
                              padchest_row(2, 3, "PA", "['abnormal foreign body']")])
    s = settings("padchest", tmp_path, label_set=["emphysema", "nodule_or_mass", "no_finding"])
    exact = harmonise(build_index(s), s).labels
    np.testing.assert_array_equal(exact[["y_emphysema", "y_nodule_or_mass", "y_no_finding"]], [[0, 0, 0], [1, 0, 0],
                                                                                              [0, 0, 0]])
    s["labels"]["padchest_matching"] = "substring"
    sub = harmonise(build_index(s), s).labels
    np.testing.assert_array_equal(sub[["y_emphysema", "y_nodule_or_mass", "y_no_finding"]], [[1, 0, 0], [1, 1, 0],
                                                                                            [0, 0, 1]])


@pytest.mark.parametrize(("drop", "kept"), [(None, [0]), (["empty", "exclude"], [0]), ([], [0, 2, 3]),
                                            (["exclude"], [0, 2]), (["empty"], [0, 3])])
def test_padchest_drop_empty_and_exclude(tmp_path: Path, drop, kept) -> None:
    write_padchest(tmp_path, [padchest_row(0, 1, "PA", "['cardiomegaly']"),
                              padchest_row(1, 2, "AP", None),  # no Labels at all: always dropped
                              padchest_row(2, 3, "PA", "['']"),
                              padchest_row(3, 4, "AP", "['exclude', 'cardiomegaly']"),
                              padchest_row(4, 5, "L", "['']")])  # lateral: the view filter still applies
    s = settings("padchest", tmp_path, label_set=["cardiomegaly", "no_finding"])
    if drop is not None:
        s["labels"]["padchest_drop"] = drop
    h = harmonise(build_index(s), s)
    assert list(h.labels["image_id"].str[:35].astype(int)) == kept
    assert h.exclusions["labels_missing"] == 1 and sum(h.exclusions.values()) == 5 - len(kept)
    y = h.labels.set_index(h.labels["image_id"].str[:35].astype(int))
    assert list(y.loc[kept, "y_cardiomegaly"]) == [1.0 if k in (0, 3) else 0.0 for k in kept]  # '' -> all 0


def test_labels_parquet_roundtrip_and_schema_rejects(tmp_path: Path) -> None:
    s = _chexpert(tmp_path / "c")
    h = harmonise(build_index(s), s)
    path = tmp_path / "labels.parquet"
    write_labels(h.labels, h.label_set, path)
    df, labels = read_labels(path)
    assert labels == ["cardiomegaly", "edema", "no_finding", "hernia"]
    assert json.loads(pq.read_schema(path).metadata[b"cxrbench.labels"]) == labels
    assert all(df[f"y_{f}"].dtype == np.float32 for f in labels)
    pd.testing.assert_frame_equal(df, h.labels)
    with pytest.raises(LabelsSchemaError, match="y_edema"):
        write_labels(h.labels.assign(y_edema=np.float32(2.0)), h.label_set, tmp_path / "bad.parquet")
    leak = h.labels.copy()
    leak.loc[0, "patient_id"], leak.loc[1, "patient_id"] = "same", "same"
    leak.loc[0, "split"], leak.loc[1, "split"] = "train", "test"
    with pytest.raises(LabelsSchemaError, match="more than one split"):
        write_labels(leak, h.label_set, tmp_path / "bad.parquet")
    with pytest.raises(LabelsSchemaError, match="do not match the label set"):
        write_labels(h.labels, list(reversed(h.label_set)), tmp_path / "bad.parquet")


def test_cli_index_then_harmonise(tmp_path: Path) -> None:
    from cxrbench.cli import main
    from cxrbench.paths import Layout

    rows = nih_rows(12, 2)
    root = tmp_path / "nih"
    write_nih(root, rows, test={r[0] for r in rows if r[2] > 9})
    touch_images(root, [f"images/{r[0]}" for r in rows])
    layout = Layout(tmp_path / "results")
    s = json.dumps(settings("chestxray14", root, label_set="study_chestxray14"))
    assert main(["index", "--settings", s, "--out", str(layout.index("nih"))]) == 0
    assert main(["harmonise", "--settings", s, "--index", str(layout.index("nih")),
                 "--out", str(layout.labels("nih"))]) == 0
    df, labels = read_labels(layout.labels("nih"))
    assert len(labels) == 14 and len(df) == 24
    summary = pd.read_csv(layout.labels_summary("nih", "csv"))
    test_rows = summary[(summary.section == "split") & (summary.name == "test")]
    assert int(test_rows["count"].iloc[0]) == 6 and int(test_rows["patients"].iloc[0]) == 3
    card = summary[(summary.section == "label") & (summary.name == "cardiomegaly") & (summary.split == "all")].iloc[0]
    expected = sum("Cardiomegaly" in r[1].split("|") for r in rows)
    assert card.positive == expected and card.prevalence == pytest.approx(expected / 24)
    md = layout.labels_summary("nih", "md").read_text()
    assert "| cardiomegaly |" in md and "## Exclusions" in md
    # same settings -> byte-identical labels
    first = layout.labels("nih").read_bytes()
    assert main(["harmonise", "--settings", s, "--index", str(layout.index("nih")),
                 "--out", str(layout.labels("nih"))]) == 0
    assert layout.labels("nih").read_bytes() == first
    (root / "images" / rows[0][0]).unlink()
    assert main(["harmonise", "--settings", s, "--index", str(layout.index("nih")),
                 "--out", str(tmp_path / "x.parquet")]) == 2
