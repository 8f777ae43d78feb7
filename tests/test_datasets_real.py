"""The public adapters on the real, full label CSVs shipped in the torchxrayvision wheel (no images).

Every expected number is computed here independently with plain pandas from the same files (or
quoted from datasets.md where it was verified on them), never from the adapter's own code.
"""

from __future__ import annotations

import ast
import gzip
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cxrbench.datasets import build_index, native_vocabulary, source_values
from cxrbench.labels import harmonise
from cxrbench.labels.splits import check_disjoint

_SPEC = importlib.util.find_spec("torchxrayvision")
DATA = Path(_SPEC.submodule_search_locations[0]) / "data" if _SPEC else None
pytestmark = pytest.mark.skipif(DATA is None, reason="torchxrayvision wheel (test data source) not installed")


def _settings(adapter: str, root: Path, **entry) -> dict:
    return {"name": adapter, "dataset": {"adapter": adapter, "root": str(root), **entry},
            "labels": {}, "splits": {"test_fraction": 0.2, "val_fraction": 0.1}, "seed": 20230815}


def _gunzip(src: Path, dst: Path) -> None:
    with gzip.open(src, "rb") as fi, open(dst, "wb") as fo:
        shutil.copyfileobj(fi, fo)


def _share_near(labels: pd.DataFrame, split: str, fraction: float, pool: pd.Series | None = None) -> None:
    """The image share of ``split`` (within ``pool``) is within 4 standard deviations of ``fraction``.

    Each patient is drawn on its own with probability ``fraction`` (labels/splits.py), so the image share
    has standard deviation sqrt(f (1 - f) sum n_i^2) / N for patients with n_i images.
    """
    rows = labels if pool is None else labels[pool]
    n = rows.groupby("patient_id").size().to_numpy(dtype=float)
    sd = np.sqrt(fraction * (1 - fraction) * (n**2).sum()) / n.sum()
    share = (rows["split"] == split).mean()
    assert abs(share - fraction) < 4 * sd, (split, share, fraction, sd)


def _no_overlap(labels: pd.DataFrame) -> None:
    assert labels.groupby("patient_id")["split"].nunique().max() == 1
    check_disjoint(labels["patient_id"], labels["split"], where="test")


@pytest.fixture(scope="module")
def nih(tmp_path_factory):
    root = tmp_path_factory.mktemp("nih")
    _gunzip(DATA / "Data_Entry_2017_v2020.csv.gz", root / "Data_Entry_2017_v2020.csv")
    ref = pd.read_csv(root / "Data_Entry_2017_v2020.csv")
    test = ref["Patient ID"] % 4 == 0  # stand-in official lists (the real ones are not in the wheel)
    (root / "test_list.txt").write_text("\n".join(ref.loc[test, "Image Index"]) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(ref.loc[~test, "Image Index"]) + "\n")
    s = _settings("chestxray14", root, label_set="study_chestxray14")
    idx = build_index(s)
    return ref, test, idx, harmonise(idx, s)


def test_nih_counts_prevalence_and_splits(nih) -> None:
    ref, test, idx, h = nih
    assert len(idx) == 112_120 and idx["patient_id"].nunique() == 30_805
    tokens = ref["Finding Labels"].str.split("|").explode().value_counts()
    values = source_values(idx, list(tokens.index))
    for token, count in tokens.items():
        assert values[token].sum() == count, token
    # datasets.md section 1.5, verified on this file
    assert tokens["Infiltration"] == 19_894 and tokens["Hernia"] == 227 and tokens["No Finding"] == 60_361
    y = h.labels
    assert len(y) == 112_120 and h.exclusions == {}
    assert (y["split"] == "test").sum() == test.sum()
    assert set(y.loc[y["split"] == "test", "image_id"]) == set(ref.loc[test, "Image Index"].str[:-4])
    assert y["y_pleural_effusion"].sum() == tokens["Effusion"]
    assert y["y_nodule"].sum() == tokens["Nodule"] and y["y_no_finding"].sum() == tokens["No Finding"]
    assert len(h.label_set) == 14 and "infiltration" not in h.label_set
    _share_near(y, "val", 0.1, pool=y["split"] != "test")
    _no_overlap(y)


@pytest.fixture(scope="module")
def chexpert(tmp_path_factory):
    root = tmp_path_factory.mktemp("chexpert")
    _gunzip(DATA / "chexpert_train.csv.gz", root / "train.csv")
    pd.read_csv(root / "train.csv", nrows=0).to_csv(root / "valid.csv", index=False)  # header-only valid.csv
    s = _settings("chexpert", root, label_set="study_chexpert")
    idx = build_index(s)
    return pd.read_csv(root / "train.csv"), idx, s


def test_chexpert_counts_views_and_policies(chexpert) -> None:
    ref, idx, s = chexpert
    assert len(idx) == 223_414 and idx["patient_id"].nunique() == 64_540
    assert (idx["view"] == "LATERAL").sum() == (ref["Frontal/Lateral"] == "Lateral").sum() == 32_387
    frontal = ref[(ref["Frontal/Lateral"] == "Frontal") & ref["AP/PA"].isin(["AP", "PA"])]
    assert len(frontal) == 161_590 + 29_420  # datasets.md section 2.2
    h = harmonise(idx, s)
    y = h.labels
    assert len(y) == len(frontal)
    assert h.exclusions == {"view_not_kept": len(ref) - len(frontal)}
    # issue 10 section 5: the study kept every `Frontal` row, 17 of which have AP/PA = LL / RL (view OTHER)
    odd = (ref["Frontal/Lateral"] == "Frontal") & ref["AP/PA"].isin(["LL", "RL"])
    assert odd.sum() == 17
    as_study = harmonise(idx, {**s, "dataset": {**s["dataset"], "views": ["PA", "AP", "AP_SUPINE", "OTHER"]}})
    assert len(as_study.labels) == (ref["Frontal/Lateral"] == "Frontal").sum() == len(frontal) + 17
    for finding, column in [("cardiomegaly", "Cardiomegaly"), ("pleural_effusion", "Pleural Effusion"),
                            ("lung_lesion", "Lung Lesion"), ("no_finding", "No Finding")]:
        assert y[f"y_{finding}"].sum() == (frontal[column] == 1.0).sum(), finding  # u_zeros, blank -> 0
        assert y[f"y_{finding}"].notna().all()
    # derived 80/20 (no official test in train.csv), patient-grouped
    _share_near(y, "test", 0.2)
    _no_overlap(y)
    s2 = {**s, "labels": {"uncertainty": "u_ignore", "drop_uncertain_in": ["cardiomegaly", "lung_opacity",
                                                                           "lung_lesion", "pneumonia", "edema"]}}
    h2 = harmonise(idx, s2)
    unc = (frontal[["Cardiomegaly", "Lung Opacity", "Lung Lesion", "Pneumonia", "Edema"]] == -1.0).any(axis=1)
    assert h2.exclusions["uncertain_in_drop_set"] == unc.sum()
    kept = frontal[~unc]
    assert np.isnan(h2.labels["y_atelectasis"]).sum() == (kept["Atelectasis"] == -1.0).sum()


@pytest.fixture(scope="module")
def padchest(tmp_path_factory):
    root = tmp_path_factory.mktemp("padchest")
    name = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
    (root / name).symlink_to(DATA / name)
    s = _settings("padchest", root, label_set="study_padchest")
    idx = build_index(s)
    ref = pd.read_csv(DATA / name, usecols=["ImageID", "PatientID", "Projection", "Labels"], dtype=str)
    ref["tokens"] = ref["Labels"].map(lambda t: {x.strip() for x in ast.literal_eval(t)} - {""}
                                      if isinstance(t, str) else set())
    return ref, idx, harmonise(idx, s)


def test_padchest_counts_exclusions_and_exact_tokens(padchest) -> None:
    ref, idx, h = padchest
    assert len(idx) == 160_861 and idx["patient_id"].nunique() == 67_625
    vocab = native_vocabulary("padchest")
    values = source_values(idx, vocab)
    assert np.nansum(values["normal"]) == 50_616  # datasets.md 5.5
    # images containing the item; datasets.md's 15,028 counts occurrences (6 rows list it twice)
    assert np.nansum(values["cardiomegaly"]) == ref["tokens"].map(lambda t: "cardiomegaly" in t).sum() == 15_022
    # every item on every row, against ast.literal_eval (the adapter's regex fast path must agree)
    per_item = ref["tokens"].map(sorted).explode().dropna().value_counts()
    assert {t: int(np.nansum(v)) for t, v in values.items() if np.nansum(v) > 0} == per_item.to_dict()
    missing = ref["Labels"].isna().to_numpy()
    assert np.isnan(values["normal"][missing]).all() and not np.isnan(values["normal"][~missing]).any()
    frontal = ref["Projection"].isin(["PA", "AP", "AP_horizontal"])
    assert frontal.sum() == 110_633
    missing = ref["Labels"].isna()
    empty = (ref["tokens"].map(len) == 0) & ~missing
    excluded = ref["tokens"].map(lambda t: "exclude" in t) & ~empty & ~missing
    # issue 10 section 5: the frontal rows the study kept and the default drops
    assert (frontal & empty).sum() == (frontal & ref["Labels"].eq("['']")).sum() == 511
    assert (frontal & excluded).sum() == 973
    assert h.exclusions == {"labels_missing": int(missing.sum()), "labels_empty": int(empty.sum()),
                            "source_marked_exclude": int(excluded.sum()),
                            "view_not_kept": int((~frontal & ~empty & ~excluded & ~missing).sum())}
    kept = ref[frontal & ~empty & ~excluded & ~missing]
    y = h.labels
    assert len(y) == len(kept) and len(h.label_set) == 17
    emph = kept["tokens"].map(lambda t: "emphysema" in t)
    assert y["y_emphysema"].sum() == emph.sum()  # exact: subcutaneous emphysema not counted
    nm = kept["tokens"].map(lambda t: bool(t & {"nodule", "multiple nodules", "pulmonary mass", "mass"}))
    assert y["y_nodule_or_mass"].sum() == nm.sum()
    _share_near(y, "test", 0.2)
    _no_overlap(y)


def test_padchest_removing_images_moves_no_other(padchest) -> None:
    """Issue 10 section 6: removing 100 PadChest images used to move 9 surviving images to another split."""
    _, idx, h = padchest
    gone = np.random.default_rng(0).choice(len(idx), 100, replace=False)
    fewer = harmonise(idx.drop(index=idx.index[gone]).reset_index(drop=True),
                      _settings("padchest", Path("/unused"), label_set="study_padchest")).labels
    before, after = h.labels.set_index("image_id")["split"], fewer.set_index("image_id")["split"]
    assert len(after) > len(before) - 100 and (before.loc[after.index] == after).all()


def test_padchest_keep_empty_and_exclude_as_the_study(padchest) -> None:
    ref, idx, h = padchest
    s = _settings("padchest", Path("/unused"), label_set="study_padchest")
    s["labels"]["padchest_drop"] = []
    y = harmonise(idx, s).labels
    frontal = ref["Projection"].isin(["PA", "AP", "AP_horizontal"])
    assert len(y) == len(h.labels) + 511 + 973 == (frontal & ref["Labels"].notna()).sum()
    empty = y["raw_Labels"].eq("['']")
    assert empty.sum() == 511 and (y.loc[empty, [f"y_{f}" for f in h.label_set]] == 0).all().all()
    only = dict(s, labels={"padchest_drop": ["exclude"]})
    assert len(harmonise(idx, only).labels) == len(h.labels) + 511
    _no_overlap(y)


def test_padchest_substring_variant(padchest) -> None:
    ref, idx, _ = padchest
    s = _settings("padchest", Path("/unused"), label_set=["emphysema", "no_finding"])
    s["labels"]["padchest_matching"] = "substring"
    y = harmonise(idx, s).labels.set_index("image_id")
    ref = ref.set_index(ref["ImageID"].str[:-4]).loc[y.index]
    assert y["y_emphysema"].sum() == ref["Labels"].str.contains("emphysema").sum()
    assert y["y_no_finding"].sum() == ref["Labels"].str.contains("normal").sum()


@pytest.mark.parametrize("rule", ["majority", "any"])
def test_vinbigdata_kaggle_variant_reader_merge(tmp_path: Path, rule: str) -> None:
    (tmp_path / "train.csv.gz").symlink_to(DATA / "vinbigdata-train.csv.gz")
    s = _settings("vindr", tmp_path, label_file="train.csv.gz", label_set="study_vindr", reader_merge=rule)
    idx = build_index(s)
    ref = pd.read_csv(DATA / "vinbigdata-train.csv.gz")
    assert len(ref) == 67_914 and len(idx) == ref["image_id"].nunique() == 15_000
    per_reader = ref.drop_duplicates(["image_id", "rad_id", "class_name"])
    positives = per_reader.groupby(["image_id", "class_name"]).size()
    readers = ref.groupby("image_id")["rad_id"].nunique()
    for cls in ["Cardiomegaly", "Pleural effusion", "Nodule/Mass", "No finding"]:
        pos = positives.xs(cls, level="class_name")
        need = readers.loc[pos.index] / 2 if rule == "majority" else 0
        expected = int((pos > need).sum())
        assert idx[f"raw_{cls}"].sum() == expected, cls
    assert "raw_Pneumonia" not in idx  # a global label absent from the Kaggle variant
    h = harmonise(idx, s)
    assert h.labels["y_pneumonia"].isna().all()  # not assessed: NaN, never 0 (even with not_mentioned=negative)
    assert h.not_assessed == ["pneumonia"] and h.labels["y_cardiomegaly"].notna().all()
    assert (h.labels["split"] == "test").sum() > 0  # no official test rows: derived
    _no_overlap(h.labels)
