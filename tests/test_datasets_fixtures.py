"""Adapters on small hand-written fixtures in each dataset's true native format, including bad input.

The writer functions here are also used by tests/test_labels_*.py.
"""

from __future__ import annotations

import ast
import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cxrbench.datasets import (
    DatasetFormatError,
    build_index,
    label_files,
    native_vocabulary,
    read_index,
    source_values,
    write_index,
)
from cxrbench.datasets._io import parse_token_lists, token_indicators
from cxrbench.datasets.padchest import _split_labels

CHEX_LABELS = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
               "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
               "Fracture", "Support Devices"]
VINDR_LABELS = ["Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture",
                "Consolidation", "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity",
                "Lung cavity", "Lung cyst", "Mediastinal shift", "Nodule/Mass", "Pleural effusion",
                "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis", "Rib fracture", "Other lesion", "COPD",
                "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding"]
UKA_GRADED = ["cardiomegaly", "congestion", "pleural_effusion_right", "pleural_effusion_left",
              "pneumonic_infiltrates_right", "pneumonic_infiltrates_left", "atelectasis_right", "atelectasis_left",
              "pneumothorax_right", "pneumothorax_left"]
NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")


def settings(adapter: str, root: Path, **entry) -> dict:
    return {"name": adapter, "dataset": {"adapter": adapter, "root": str(root), **entry},
            "labels": {"uka_positive_grades": [3, 4]}, "splits": {}, "seed": 5}


def touch_images(root: Path, paths) -> None:
    for p in paths:
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).write_bytes(b"x")


def write_nih(root: Path, rows: list[tuple[str, str, int, str, str]], test: set[str], file="Data_Entry_2017_v2020.csv",
              trailing_comma=False) -> None:
    """rows: (image, findings, patient, sex, view)."""
    root.mkdir(parents=True, exist_ok=True)
    tail = "," if trailing_comma else ""
    lines = [NIH_HEADER + tail]
    for i, (img, finding, pid, sex, view) in enumerate(rows):
        lines.append(f"{img},{finding},{i},{pid},{40 + i},{sex},{view},2500,2048,0.143,0.143{tail}")
    (root / file).write_text("\n".join(lines) + "\n")
    (root / "test_list.txt").write_text("".join(f"{r[0]}\n" for r in rows if r[0] in test))
    (root / "train_val_list.txt").write_text("".join(f"{r[0]}\n" for r in rows if r[0] not in test))


def nih_rows(n_patients=12, per_patient=3):
    tokens = ["No Finding", "Cardiomegaly", "Effusion|Infiltration", "Atelectasis|Cardiomegaly|Edema", "Hernia",
              "Mass|Nodule"]
    rows = []
    for p in range(1, n_patients + 1):
        for k in range(per_patient):
            rows.append((f"{p:08d}_{k:03d}.png", tokens[(p + k) % len(tokens)], p, "M" if p % 2 else "F",
                         "PA" if k % 2 == 0 else "AP"))
    return rows


def write_chexpert(root: Path, train_rows: list[dict], valid_rows: list[dict]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    cols = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEX_LABELS]
    for name, rows in (("train.csv", train_rows), ("valid.csv", valid_rows)):
        pd.DataFrame(rows, columns=cols).to_csv(root / name, index=False)


def chexpert_row(split, patient, study, view, frontal, appa, **labels):
    row = {"Path": f"CheXpert-v1.0-small/{split}/patient{patient:05d}/study{study}/{view}.jpg", "Sex": "Female",
           "Age": 60, "Frontal/Lateral": frontal, "AP/PA": appa}
    row.update({k.replace("_", " "): v for k, v in labels.items()})
    return row


def write_mimic(root: Path) -> dict:
    """Two patients, three studies (one without labels), frontal and lateral images."""
    root.mkdir(parents=True, exist_ok=True)
    meta = pd.DataFrame({
        "dicom_id": ["a1", "a2", "b1", "c1"], "subject_id": [10000001, 10000001, 10000001, 11000002],
        "study_id": [50000001, 50000001, 50000002, 50000003],
        "PerformedProcedureStepDescription": "CHEST (PA AND LAT)", "ViewPosition": ["PA", "LATERAL", "AP", "PA"],
        "Rows": 3000, "Columns": 2500, "StudyDate": 21800101, "StudyTime": 101530.1,
        "ProcedureCodeSequence_CodeMeaning": "x", "ViewCodeSequence_CodeMeaning": "x",
        "PatientOrientationCodeSequence_CodeMeaning": "Erect"})
    labels = pd.DataFrame({"subject_id": [10000001, 11000002], "study_id": [50000001, 50000003]})
    for c in sorted(CHEX_LABELS):
        labels[c] = np.nan
    labels.loc[0, "Cardiomegaly"] = -1.0
    labels.loc[0, "Pleural Effusion"] = 1.0
    labels.loc[1, "No Finding"] = 1.0
    split = meta[["dicom_id", "study_id", "subject_id"]].assign(split=["train", "train", "train", "test"])
    meta.to_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
    labels.to_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", index=False)
    split.to_csv(root / "mimic-cxr-2.0.0-split.csv.gz", index=False)
    return {"meta": meta, "labels": labels}


def write_vindr(root: Path, train: list[tuple[str, str, dict]], test: list[tuple[str, dict]],
                test_other_spelling=True) -> None:
    """train: (image, reader, {label: 1}); test: (image, {label: 1})."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    rows = [{"image_id": i, "rad_id": r, **{c: pos.get(c, 0) for c in VINDR_LABELS}} for i, r, pos in train]
    pd.DataFrame(rows).to_csv(root / "annotations/image_labels_train.csv", index=False)
    rows = [{"image_id": i, **{c: pos.get(c, 0) for c in VINDR_LABELS}} for i, pos in test]
    df = pd.DataFrame(rows)
    if test_other_spelling:
        df = df.rename(columns={"Other diseases": "Other disease"})
    df.to_csv(root / "annotations/image_labels_test.csv", index=False)


def write_padchest(root: Path, rows: list[dict]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    cols = ["ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM",
            "ViewPosition_DICOM", "Projection", "MethodProjection", "Pediatric", "Report", "MethodLabel", "Labels"]
    df = pd.DataFrame(rows).reindex(columns=cols)
    df.index.name = ""
    path = root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
    with gzip.open(path, "wt") as fh:
        df.to_csv(fh)
    return path


def padchest_row(i, patient, projection, labels, method="Physician"):
    return {"ImageID": f"{i:035d}_ab12cd.png", "ImageDir": i % 3, "StudyDate_DICOM": 20130412,
            "StudyID": f"{1000 + i:035d}", "PatientID": f"{patient:035d}", "PatientBirth": 1941.0,
            "PatientSex_DICOM": "F", "ViewPosition_DICOM": "", "Projection": projection,
            "MethodProjection": "Manual review of DICOM fields", "Pediatric": "No",
            "Report": " cardiomegali .\n derram .", "MethodLabel": method, "Labels": labels}


def write_uka(root: Path, rows: list[dict]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    cols = ["image_id", "split", "subset", "age", "patient_sex", "subject_id", *UKA_GRADED[:8], "pneumothorax_right",
            "pneumothorax_left", "healthy"]
    pd.DataFrame(rows).reindex(columns=cols).to_csv(root / "master_list.csv", index=False)


def uka_row(i, subject, split, grades: dict, healthy=0):
    return {"image_id": f"img{i:04d}", "split": split, "subset": f"s{i % 2}", "age": 70, "patient_sex": "M",
            "subject_id": subject, **{c: grades.get(c, 1) for c in UKA_GRADED}, "healthy": healthy}


# --- tests ----------------------------------------------------------------------------------------


def test_label_files_lists_native_files(tmp_path: Path) -> None:
    assert label_files("vindr", tmp_path, {}) == [tmp_path / "annotations/image_labels_train.csv",
                                                  tmp_path / "annotations/image_labels_test.csv"]
    assert label_files("pedicxr", tmp_path, {}) == label_files("vindr", tmp_path, {})
    assert [p.name for p in label_files("chestxray14", tmp_path, {"label_file": "Data_Entry_2017.csv"})] == [
        "Data_Entry_2017.csv", "train_val_list.txt", "test_list.txt"]
    assert [p.name for p in label_files("chexpert", tmp_path, {})] == ["train.csv", "valid.csv"]
    (tmp_path / "test.csv").write_text("Path\n")
    assert [p.name for p in label_files("chexpert", tmp_path, {})] == ["train.csv", "valid.csv", "test.csv"]
    assert [p.name for p in label_files("mimic", tmp_path, {})] == [
        "mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-chexpert.csv.gz", "mimic-cxr-2.0.0-split.csv.gz"]
    assert [p.name for p in label_files("padchest", tmp_path, {})] == [
        "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"]
    assert label_files("uka", tmp_path, {}) == [tmp_path / "master_list.csv"]
    assert label_files("generic_csv", tmp_path, {"columns": {"label_file": "x.csv", "image_id": "i", "path": "p",
                                                             "labels": {"edema": "E"}}}) == [tmp_path / "x.csv"]
    with pytest.raises(ValueError, match="unknown dataset adapter 'nope'"):
        label_files("nope", tmp_path, {})


def test_chestxray14_tokens_split_and_2017_variant(tmp_path: Path) -> None:
    rows = nih_rows(4, 2)
    write_nih(tmp_path, rows, test={"00000004_000.png", "00000004_001.png"}, file="Data_Entry_2017.csv",
              trailing_comma=True)
    idx = build_index(settings("chestxray14", tmp_path, label_file="Data_Entry_2017.csv"))
    assert list(idx["image_id"]) == [r[0][:-4] for r in rows]
    assert list(idx["source_path"]) == [f"images/{r[0]}" for r in rows]
    assert list(idx["patient_id"]) == [str(r[2]) for r in rows]
    assert (idx["split_official"] == "test").sum() == 2
    vocab = native_vocabulary("chestxray14")
    values = source_values(idx, vocab)
    for i, (img, finding, *_) in enumerate(rows):
        assert {t for t in vocab if values[t][i] == 1.0} == set(finding.split("|"))
    assert not any(c.startswith("raw_") and c != "raw_Finding Labels" for c in idx.columns)  # compact tokens
    assert set(idx["view"]) == {"PA", "AP"} and set(idx["sex"]) == {"M", "F"}


def test_chestxray14_image_in_both_lists_or_in_none(tmp_path: Path, caplog) -> None:
    rows = nih_rows(2, 2)
    write_nih(tmp_path, rows, test={rows[0][0]})
    with open(tmp_path / "train_val_list.txt", "a") as fh:
        fh.write("99999999_000.png\n")  # listed but absent from the label file: a warning, not an error
    (tmp_path / "test_list.txt").write_text(f"{rows[0][0]}\n{rows[1][0]}\n\n")  # rows[1] is also in train_val
    with pytest.raises(DatasetFormatError, match=rf"test_list.txt: image '{rows[1][0]}' is also listed in "
                                                 r"train_val_list.txt"):
        build_index(settings("chestxray14", tmp_path))
    (tmp_path / "test_list.txt").write_text(f"{rows[0][0]}\n")
    (tmp_path / "train_val_list.txt").write_text(f"{rows[1][0]}\n99999999_000.png\n")
    idx = build_index(settings("chestxray14", tmp_path))
    assert list(idx["split_official"].fillna("none")) == ["test", "train", "none", "none"]
    assert "lists 1 image(s) absent from the label file" in caplog.text


@pytest.mark.parametrize("text", ["['a', ' b']", "[]", "['']", "['a''b']", "['a',]", "['a', ]", "['a',' b']",
                                  "[\"a\", 'b']", "['a\\'s']", "[ 'a']", "['x, y', 'z']"])
def test_padchest_fast_list_parse_agrees_with_literal_eval(text: str) -> None:
    assert _split_labels(text) == [v.strip() for v in ast.literal_eval(text)]


def test_token_lists_and_indicators() -> None:
    values = pd.Series(["['b', ' a', 'b']", None, "['']", "[]", "['a', 'c']", "['b', ' a', 'b']"], dtype="str")
    tokens = parse_token_lists(values, split=_split_labels, vocabulary=["a", "b", "c"], path=Path("f.csv"),
                               column="Labels")
    assert tokens.tolist()[:1] + tokens.tolist()[2:] == ["b|a", "", "", "a|c", "b|a"]  # distinct, first-seen order
    assert pd.isna(tokens.iloc[1])
    m = token_indicators(tokens, ["c", "a", "zz"])
    np.testing.assert_array_equal(m, [[0, 1, 0], [np.nan] * 3, [0, 0, 0], [0, 0, 0], [1, 1, 0], [0, 1, 0]])
    assert m.dtype == np.float32 and token_indicators(tokens, []).shape == (6, 0)
    with pytest.raises(DatasetFormatError, match=r"f.csv: data row 3 \(line 4\), column 'Labels'.*\['d'\]"):
        parse_token_lists(pd.Series(["['a']", "['a']", "['d']"]), split=_split_labels, vocabulary=["a"],
                          path=Path("f.csv"), column="Labels")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("Finding Labels", "Findings"), r"missing required column\(s\) \['Finding Labels'\]"),
        (lambda t: t.replace("Cardiomegaly,", "Cardiomegally,", 1), r"data row \d+ \(line \d+\), column 'Finding Labels'.*unknown label token"),
        (lambda t: t.replace(",41,", ",forty,", 1), r"data row 2 \(line 3\), column 'Patient Age': expected a number"),
        (lambda t: t.replace("00000001_001.png", "00000001_000.png", 1), r"duplicate image id '00000001_000.png'.*rows 1, 2"),
    ],
)
def test_chestxray14_bad_input_names_file_row_column(tmp_path: Path, edit, message) -> None:
    write_nih(tmp_path, nih_rows(2, 2), test=set())
    path = tmp_path / "Data_Entry_2017_v2020.csv"
    path.write_text(edit(path.read_text()))
    with pytest.raises(DatasetFormatError, match=message) as exc:
        build_index(settings("chestxray14", tmp_path))
    assert str(path) in str(exc.value)


def test_chexpert_strips_release_folder_and_parses_patient(tmp_path: Path) -> None:
    write_chexpert(tmp_path, [
        chexpert_row("train", 1, 1, "view1_frontal", "Frontal", "AP", Cardiomegaly=-1.0, Edema=1.0),
        chexpert_row("train", 1, 1, "view2_lateral", "Lateral", None, Cardiomegaly=-1.0, Edema=1.0),
        chexpert_row("train", 2, 1, "view1_frontal", "Frontal", "LL", No_Finding=1.0),
    ], [chexpert_row("valid", 64541, 1, "view1_frontal", "Frontal", "PA", Cardiomegaly=0.0)])
    idx = build_index(settings("chexpert", tmp_path))
    assert list(idx["source_path"]) == ["train/patient00001/study1/view1_frontal.jpg",
                                        "train/patient00001/study1/view2_lateral.jpg",
                                        "train/patient00002/study1/view1_frontal.jpg",
                                        "valid/patient64541/study1/view1_frontal.jpg"]
    assert list(idx["patient_id"]) == ["patient00001", "patient00001", "patient00002", "patient64541"]
    assert list(idx["view"]) == ["AP", "LATERAL", "OTHER", "PA"]
    assert list(idx["split_official"]) == ["train", "train", "train", "val"]
    np.testing.assert_array_equal(idx["raw_Cardiomegaly"], [-1, -1, np.nan, 0])
    assert idx["raw_Edema"].isna().sum() == 2 and idx["study_id"].iloc[0] == "patient00001/study1"


def test_chexpert_bad_label_value_and_path(tmp_path: Path) -> None:
    write_chexpert(tmp_path, [chexpert_row("train", 1, 1, "view1_frontal", "Frontal", "AP", Edema=2.0)], [])
    with pytest.raises(DatasetFormatError, match=r"train.csv: data row 1 \(line 2\), column 'Edema'.*got '2.0'"):
        build_index(settings("chexpert", tmp_path))
    write_chexpert(tmp_path, [{**chexpert_row("train", 1, 1, "v", "Frontal", "AP"), "Path": "somewhere/x.jpg"}], [])
    with pytest.raises(DatasetFormatError, match=r"column 'Path'.*somewhere/x.jpg"):
        build_index(settings("chexpert", tmp_path))


def test_mimic_broadcasts_study_labels_and_maps_split(tmp_path: Path) -> None:
    write_mimic(tmp_path)
    idx = build_index(settings("mimic", tmp_path))
    assert list(idx["source_path"]) == [
        "files/p10/p10000001/s50000001/a1.jpg", "files/p10/p10000001/s50000001/a2.jpg",
        "files/p10/p10000001/s50000002/b1.jpg", "files/p11/p11000002/s50000003/c1.jpg"]
    np.testing.assert_array_equal(idx["raw_Cardiomegaly"], [-1, -1, np.nan, np.nan])
    np.testing.assert_array_equal(idx["raw_Pleural Effusion"], [1, 1, np.nan, np.nan])
    assert list(idx["exclude_reason"].fillna("")) == ["", "", "no_study_labels", ""]
    assert list(idx["view"]) == ["PA", "LATERAL", "AP", "PA"]
    assert list(idx["split_official"]) == ["train", "train", "train", "test"]


def test_mimic_bad_split_value(tmp_path: Path) -> None:
    write_mimic(tmp_path)
    path = tmp_path / "mimic-cxr-2.0.0-split.csv.gz"
    df = pd.read_csv(path)
    df.loc[2, "split"] = "holdout"
    df.to_csv(path, index=False)
    with pytest.raises(DatasetFormatError, match=r"split.csv.gz: data row 3 \(line 4\), column 'split'.*'holdout'"):
        build_index(settings("mimic", tmp_path))


@pytest.mark.parametrize(("rule", "expected"), [("majority", [1, 0, 1]), ("any", [1, 1, 1])])
def test_vindr_reader_merge(tmp_path: Path, rule: str, expected: list[int]) -> None:
    train = [("img1", "R1", {"Cardiomegaly": 1}), ("img1", "R2", {"Cardiomegaly": 1}), ("img1", "R3", {}),
             ("img2", "R1", {"Cardiomegaly": 1}), ("img2", "R4", {}), ("img2", "R5", {"No finding": 1})]
    write_vindr(tmp_path, train, [("img3", {"Cardiomegaly": 1, "Other diseases": 1})])
    idx = build_index(settings("vindr", tmp_path, reader_merge=rule))
    assert list(idx["image_id"]) == ["img1", "img2", "img3"]
    np.testing.assert_array_equal(idx["raw_Cardiomegaly"], expected)
    assert list(idx["raw_Other diseases"]) == [0, 0, 1]  # test file's 'Other disease' spelling normalised
    assert list(idx["raw_n_readers"]) == [3, 3, 1]
    assert list(idx["source_path"]) == ["train/img1.dicom", "train/img2.dicom", "test/img3.dicom"]
    assert list(idx["split_official"]) == ["train", "train", "test"]
    assert list(idx["patient_id"]) == list(idx["image_id"])


def test_vindr_bad_input(tmp_path: Path) -> None:
    write_vindr(tmp_path, [("img1", "R1", {})], [("img1", {})])
    with pytest.raises(DatasetFormatError, match="image id 'img1' appears in both"):
        build_index(settings("vindr", tmp_path))
    path = tmp_path / "annotations/image_labels_train.csv"
    path.write_text(path.read_text().replace("Cardiomegaly", "Cardiomegalyy"))
    with pytest.raises(DatasetFormatError, match=r"image_labels_train.csv: unknown label column\(s\) \['Cardiomegalyy'\]"):
        build_index(settings("vindr", tmp_path))


def test_pedicxr_accepts_its_own_columns(tmp_path: Path) -> None:
    (tmp_path / "annotations").mkdir()
    pd.DataFrame({"image_id": ["a", "a", "a"], "rad_id": ["R1", "R2", "R3"], "No finding": [0, 0, 1],
                  "Bronchitis": [1, 1, 0], "Brocho-pneumonia": [0, 1, 0]}).to_csv(
        tmp_path / "annotations/image_labels_train.csv", index=False)
    pd.DataFrame({"image_id": ["b"], "No finding": [1], "Bronchitis": [0], "Brocho-pneumonia": [0]}).to_csv(
        tmp_path / "annotations/image_labels_test.csv", index=False)
    idx = build_index(settings("pedicxr", tmp_path))
    assert list(idx["raw_Bronchitis"]) == [1, 0] and list(idx["raw_Brocho-pneumonia"]) == [0, 0]
    assert list(idx["raw_No finding"]) == [0, 1]


def test_padchest_tokens_views_and_exclusions(tmp_path: Path) -> None:
    write_padchest(tmp_path, [
        padchest_row(0, 1, "PA", "['cardiomegaly', ' pleural effusion']"),
        padchest_row(1, 1, "L", "['cardiomegaly', ' pleural effusion']"),
        padchest_row(2, 2, "AP_horizontal", "['normal']", method="RNN_model"),
        padchest_row(3, 3, "COSTAL", "['exclude']"),
        padchest_row(4, 4, "AP", None),
        padchest_row(5, 4, "PA", "['']"),
    ])
    idx = build_index(settings("padchest", tmp_path))
    assert list(idx["view"]) == ["PA", "LATERAL", "AP_SUPINE", "OTHER", "AP", "PA"]
    np.testing.assert_array_equal(source_values(idx, ["pleural effusion"])["pleural effusion"], [1, 1, 0, 0, np.nan, 0])
    assert list(idx["source_tokens"].fillna("<NA>")) == ["cardiomegaly|pleural effusion"] * 2 + [
        "normal", "exclude", "<NA>", ""]
    assert list(idx["exclude_reason"].fillna("")) == ["", "", "", "source_marked_exclude", "labels_missing",
                                                      "labels_empty"]
    assert idx["source_path"].iloc[2] == f"2/{2:035d}_ab12cd.png"
    assert idx["age_years"].iloc[0] == 2013 - 1941
    assert idx["patient_id"].iloc[0] == f"{1:035d}"  # long ids stay strings
    assert list(idx["raw_MethodLabel"][:3]) == ["Physician", "Physician", "RNN_model"]
    write_index(idx, tmp_path / "index.parquet")  # the compact token column survives the Parquet round trip
    pd.testing.assert_frame_equal(read_index(tmp_path / "index.parquet"), idx, check_dtype=False)


@pytest.mark.parametrize(("labels", "message"), [
    ("['cardiomegaly', 'heart of gold']", r"unknown label token\(s\) \['heart of gold'\]"),
    ("cardiomegaly]", "unparsable label list"),
])
def test_padchest_bad_labels(tmp_path: Path, labels: str, message: str) -> None:
    path = write_padchest(tmp_path, [padchest_row(0, 1, "PA", "['normal']"), padchest_row(1, 1, "PA", labels)])
    with pytest.raises(DatasetFormatError, match=rf"data row 2 \(line \d+\), column 'Labels'.*{message}") as exc:
        build_index(settings("padchest", tmp_path))
    assert str(path) in str(exc.value)


def test_uka_grades_threshold_configurable(tmp_path: Path) -> None:
    write_uka(tmp_path, [uka_row(0, 7, "train", {"cardiomegaly": 3, "pleural_effusion_left": 2}),
                         uka_row(1, 7, "valid", {"cardiomegaly": 4, "pleural_effusion_left": 5}),
                         uka_row(2, 8, "test", {"cardiomegaly": 2}, healthy=1)])
    idx = build_index(settings("uka", tmp_path))
    assert list(idx["raw_cardiomegaly"]) == [1, 1, 0]
    assert list(idx["raw_pleural_effusion_left"]) == [0, 0, 0]
    assert list(idx["raw_grade_pleural_effusion_left"]) == [2, 5, 1]
    assert list(idx["raw_healthy"]) == [0, 0, 1]
    assert list(idx["split_official"]) == ["train", "val", "test"]
    assert list(idx["source_path"]) == ["images/s0/img0000.dcm", "images/s1/img0001.dcm", "images/s0/img0002.dcm"]
    s = settings("uka", tmp_path)
    s["labels"]["uka_positive_grades"] = [2, 3, 4, 5]
    assert list(build_index(s)["raw_pleural_effusion_left"]) == [1, 1, 0]


def test_uka_non_integer_grade(tmp_path: Path) -> None:
    write_uka(tmp_path, [uka_row(0, 7, "train", {"congestion": 2.5})])
    with pytest.raises(DatasetFormatError, match=r"master_list.csv: data row 1 \(line 2\), column 'congestion'.*integer"):
        build_index(settings("uka", tmp_path))


def test_generic_csv_column_mapping(tmp_path: Path) -> None:
    pd.DataFrame({"file": ["a.png", "b.png", "c.png"], "pid": ["p1", "p1", "p2"], "part": ["train", "train", "test"],
                  "proj": ["PA", "lateral", "AP"], "gender": ["female", "male", None], "years": [30, 40, None],
                  "EFF": [1, -1, None]}).to_csv(tmp_path / "labels.csv", index=False)
    cols = {"label_file": "labels.csv", "image_id": "file", "path": "file", "patient_id": "pid", "split": "part",
            "view": "proj", "sex": "gender", "age": "years", "labels": {"pleural_effusion": "EFF"}}
    idx = build_index(settings("generic_csv", tmp_path, columns=cols))
    assert list(idx["view"]) == ["PA", "LATERAL", "AP"] and list(idx["sex"]) == ["F", "M", "U"]
    np.testing.assert_array_equal(idx["raw_EFF"], [1, -1, np.nan])
    with pytest.raises(DatasetFormatError, match=r"missing required column\(s\) \['NOPE'\]"):
        build_index(settings("generic_csv", tmp_path, columns={**cols, "labels": {"edema": "NOPE"}}))


def test_index_parquet_roundtrip_and_schema(tmp_path: Path) -> None:
    write_mimic(tmp_path / "m")
    idx = build_index(settings("mimic", tmp_path / "m"))
    write_index(idx, tmp_path / "index.parquet")
    back = read_index(tmp_path / "index.parquet")
    pd.testing.assert_frame_equal(back, idx, check_dtype=False)
    bad = idx.assign(view="SIDEWAYS")
    with pytest.raises(ValueError, match="view"):
        write_index(bad, tmp_path / "bad.parquet")


def test_index_cli(tmp_path: Path) -> None:
    from cxrbench.cli import main

    write_mimic(tmp_path / "m")
    out = tmp_path / "res" / "index.parquet"
    assert main(["index", "--settings", json.dumps(settings("mimic", tmp_path / "m")), "--out", str(out)]) == 0
    assert len(read_index(out)) == 4
    broken = settings("mimic", tmp_path / "nowhere")
    assert main(["index", "--settings", json.dumps(broken), "--out", str(tmp_path / "x.parquet")]) == 2
