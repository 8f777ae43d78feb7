"""The demo data generator: native formats against the real files, determinism, learnability."""

from __future__ import annotations

import ast
import gzip
import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from cxrbench.cli import main as cli_main
from cxrbench.demo import DATASETS, GENERATOR_VERSION, MANIFEST, SCALE, write_demo
from cxrbench.demo import vindr as demo_vindr
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

# Real ChestX-ray14 rows shipped with the tests (tests/data/README.md gives their provenance).
NIH_SAMPLE = Path(__file__).parent / "data" / "chestxray14" / "Data_Entry_2017_v2020.sample.csv"


def _txv_data(name: str) -> Path:
    """A real label file shipped in the torchxrayvision wheel (located without importing it)."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("torchxrayvision (test extra) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / name


def _first_line(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return fh.readline().rstrip("\r\n")


def _read_str(path: Path) -> pd.DataFrame:
    """A label file as the adapters should read it: every value a string, blanks as ''."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _features(arr: np.ndarray) -> np.ndarray:
    """Min-max scaled, 32x32 downsampled pixels."""
    a = arr.astype(np.float32)
    a = (a - a.min()) / (a.max() - a.min() + 1e-9)
    small = Image.fromarray(np.rint(a * 255).astype(np.uint8)).resize((32, 32), Image.BILINEAR)
    return np.asarray(small, dtype=np.float32).ravel() / 255


def _cv_auroc(x: np.ndarray, y: np.ndarray) -> float:
    """5-fold cross-validated AUROC of a logistic regression."""
    p = cross_val_predict(LogisticRegression(C=0.1, max_iter=2000), x, y, cv=5, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, p))


def _dicom_display(path: Path) -> np.ndarray:
    """Decoded pixels, MONOCHROME1 inverted on the stored range."""
    ds = pydicom.dcmread(path)
    a = ds.pixel_array.astype(np.float32)
    return (2**ds.BitsStored - 1) - a if ds.PhotometricInterpretation == "MONOCHROME1" else a


# --- manifest and timing --------------------------------------------------------------------------


def test_manifest_lists_every_dataset_and_the_fake_identifiers(demo_root: Path) -> None:
    manifest = json.loads((demo_root / MANIFEST).read_text())
    assert manifest["seed"] == 7 and manifest["generator_version"] == GENERATOR_VERSION
    assert set(manifest["datasets"]) == set(DATASETS)
    for name, entry in manifest["datasets"].items():
        assert entry["images"] == 240 * SCALE.get(name, 1), name
        assert entry["root"] == DATASETS[name][0]
        assert (demo_root / entry["root"]).is_dir()
    ids = manifest["identifiers"]
    assert len(ids) > 400 and "FAKE^REFERRER" in ids
    assert any(v.startswith("FAKE^VINDR") for v in ids) and any(v.startswith("FAKE-UKA-") for v in ids)
    seconds = float((demo_root.parent / "demo-generation-seconds.txt").read_text())
    print(f"\ndemo generation, six datasets x 240 images: {seconds:.1f} s")
    assert seconds < 600


def test_every_dicom_carries_only_listed_fake_identifiers(demo_root: Path) -> None:
    ids = set(json.loads((demo_root / MANIFEST).read_text())["identifiers"])
    files = sorted((demo_root / "vindr-cxr/1.0.0").glob("*/*.dicom")) + sorted(
        (demo_root / "uka-cxr/images").glob("*/*.dcm")
    )
    assert len(files) == 480
    for path in files[::7]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for tag in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "ReferringPhysicianName"):
            assert str(ds.data_element(tag).value) in ids, (path, tag)
        assert "FAKE" in str(ds.PatientName) and "FAKE" in ds.PatientID


def test_invalid_arguments_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown demo dataset"):
        write_demo(tmp_path, seed=1, images_per_dataset=150, datasets=["nih"])
    with pytest.raises(ValueError, match="150-400"):
        write_demo(tmp_path, seed=1, images_per_dataset=20)
    with pytest.raises(SystemExit, match="not valid JSON"):
        cli_main(["demo-data", "--settings", "{seed: 1}", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="unknown keys"):
        cli_main(["demo-data", "--settings", '{"seed": 1, "images_per_dataset": 150, "sede": 2}',
                  "--out", str(tmp_path)])


# --- determinism ----------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_files_through_the_cli(demo_root: Path, tmp_path: Path) -> None:
    """Two worker processes write what one process wrote (the fixture), byte for byte."""
    settings = json.dumps({"enabled": True, "root": "ignored", "seed": 7, "images_per_dataset": 240})
    names = ["mimic", "vindr"]  # gzip tables and every DICOM transfer syntax
    assert cli_main(["demo-data", "--settings", settings, "--out", str(tmp_path), "--datasets", *names,
                     "--workers", "2"]) == 0
    for name in names:
        folder = DATASETS[name][0]
        files = sorted(p.relative_to(tmp_path / folder) for p in (tmp_path / folder).rglob("*") if p.is_file())
        assert len(files) > 240
        for rel in files:  # label files, images and DICOMs alike
            assert (tmp_path / folder / rel).read_bytes() == (demo_root / folder / rel).read_bytes(), rel


def test_another_seed_gives_other_labels(demo_root: Path, tmp_path: Path) -> None:
    write_demo(tmp_path, seed=8, images_per_dataset=240, datasets=["chexpert"])
    new = (tmp_path / "CheXpert-v1.0-small/train.csv").read_bytes()
    assert new != (demo_root / "CheXpert-v1.0-small/train.csv").read_bytes()


# --- ChestX-ray14 ---------------------------------------------------------------------------------


def test_chestxray14_matches_the_real_file_format(demo_root: Path) -> None:
    root = demo_root / "chestxray14"
    label_file = root / "Data_Entry_2017_v2020.csv"
    assert _first_line(label_file) == _first_line(NIH_SAMPLE)
    assert _first_line(label_file) == _first_line(_txv_data("Data_Entry_2017_v2020.csv.gz"))
    df = pd.read_csv(label_file)
    assert list(df.columns) == list(pd.read_csv(NIH_SAMPLE).columns)
    assert df["Image Index"].is_unique and df["Image Index"].str.fullmatch(r"\d{8}_\d{3}\.png").all()
    assert (df["Image Index"].str[:8].astype(int) == df["Patient ID"]).all()
    assert df.groupby("Patient ID").size().max() > 1
    tokens = df["Finding Labels"].str.split("|")
    vocab = {"Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis",
             "Hernia", "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax"}
    assert set().union(*tokens) == vocab | {"No Finding"}
    assert not tokens.apply(lambda t: "No Finding" in t and len(t) > 1).any()
    assert tokens.apply(lambda t: t != sorted(t)).any()  # order is not alphabetical in the real file
    assert set(df["View Position"]) == {"PA", "AP"} and set(df["Patient Gender"]) == {"M", "F"}
    test = (root / "test_list.txt").read_text().split()
    train = (root / "train_val_list.txt").read_text().split()
    assert sorted(test + train) == sorted(df["Image Index"])
    pid = {n: n[:8] for n in df["Image Index"]}
    assert not {pid[n] for n in test} & {pid[n] for n in train}
    modes = set()
    for name in df["Image Index"]:
        with Image.open(root / "images" / name) as im:
            modes.add(im.mode)
            assert im.size == (256, 256) and not im.text, name
    assert modes == {"L", "RGBA"}


# --- CheXpert -------------------------------------------------------------------------------------


def test_chexpert_matches_the_real_file_format(demo_root: Path) -> None:
    root = demo_root / "CheXpert-v1.0-small"
    real_header = _first_line(_txv_data("chexpert_train.csv.gz"))
    assert _first_line(root / "train.csv") == real_header == _first_line(root / "valid.csv")
    train, valid = _read_str(root / "train.csv"), _read_str(root / "valid.csv")
    labels = list(train.columns[5:])
    assert set(train[labels].to_numpy().ravel()) == {"1.0", "0.0", "-1.0", ""}
    assert set(train["No Finding"]) == {"1.0", ""}
    assert set(valid[labels].to_numpy().ravel()) == {"1.0", "0.0"}
    normal = train[train["No Finding"] == "1.0"]
    others = [c for c in labels if c not in ("No Finding", "Support Devices")]
    assert not normal[others].isin(["1.0", "-1.0"]).any().any()
    assert train["Path"].str.match(r"CheXpert-v1\.0-small/train/patient\d{5}/study\d+/view\d_(frontal|lateral)\.jpg").all()
    assert valid["Path"].str.startswith("CheXpert-v1.0-small/valid/").all()
    assert train["Path"].str.endswith("view2_lateral.jpg").any()
    lateral = train["Frontal/Lateral"] == "Lateral"
    assert (train.loc[lateral, "AP/PA"] == "").all() and train.loc[~lateral, "AP/PA"].isin(["AP", "PA"]).all()
    assert set(train["Sex"]) <= {"Male", "Female", "Unknown"}
    patients = train["Path"].str.extract(r"(patient\d+)")[0]
    assert patients.value_counts().max() > 1
    assert not set(patients) & set(valid["Path"].str.extract(r"(patient\d+)")[0])
    # Labels are per study: every view of a study repeats the row values.
    study = train["Path"].str.rsplit("/", n=1).str[0]
    assert (train.groupby(study)[labels].nunique() == 1).all().all()
    for rel in pd.concat([train["Path"], valid["Path"]]).iloc[::10]:
        with Image.open(root / rel.removeprefix("CheXpert-v1.0-small/")) as im:
            assert im.format == "JPEG" and im.mode == "L"


# --- MIMIC-CXR-JPG --------------------------------------------------------------------------------


def test_mimic_matches_the_documented_format(demo_root: Path) -> None:
    root = demo_root / "mimic-cxr-jpg/2.1.0"
    meta = _read_str(root / "mimic-cxr-2.0.0-metadata.csv.gz")
    labels = _read_str(root / "mimic-cxr-2.0.0-chexpert.csv.gz")
    split = _read_str(root / "mimic-cxr-2.0.0-split.csv.gz")
    assert list(meta.columns) == [
        "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
        "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
        "PatientOrientationCodeSequence_CodeMeaning"]
    assert list(labels.columns[:2]) == ["subject_id", "study_id"]
    assert list(labels.columns[2:]) == sorted(labels.columns[2:]) and len(labels.columns) == 16
    assert list(split.columns) == ["dicom_id", "study_id", "subject_id", "split"]
    assert meta["dicom_id"].str.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}").all() and meta["dicom_id"].is_unique
    assert set(meta["ViewPosition"]) == {"PA", "AP", "LATERAL", "LL"}
    assert set(split["split"]) == {"train", "validate", "test"}
    assert (split.groupby("subject_id")["split"].nunique() == 1).all()
    assert not labels.duplicated(["subject_id", "study_id"]).any()
    n_studies = meta["study_id"].nunique()
    assert 0 < n_studies - len(labels) < 0.1 * n_studies  # a few studies have no label row
    assert set(labels.iloc[:, 2:].to_numpy().ravel()) == {"1.0", "0.0", "-1.0", ""}
    assert meta.groupby("subject_id").size().max() > 1
    for row in meta.iloc[::8].itertuples():
        path = root / "files" / f"p{row.subject_id[:2]}" / f"p{row.subject_id}" / f"s{row.study_id}" / f"{row.dicom_id}.jpg"
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "L" and im.size == (int(row.Columns), int(row.Rows))
            hist = np.bincount(np.asarray(im).ravel(), minlength=256)
        # Histogram-equalised like the release: the cumulative histogram is close to a straight line.
        cdf = np.cumsum(hist) / hist.sum()
        assert np.abs(cdf - np.linspace(0, 1, 256)).max() < 0.2, path


# --- PadChest -------------------------------------------------------------------------------------


def test_padchest_matches_the_real_file_format(demo_root: Path) -> None:
    root = demo_root / "padchest"
    path = root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
    real = pd.read_csv(_txv_data(path.name), nrows=0)
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(df.columns) == list(real.columns) and df.columns[0] == "Unnamed: 0"
    assert set(df["Projection"]) == {"PA", "L", "AP", "AP_horizontal", "COSTAL"}
    assert set(df["MethodLabel"]) == {"Physician", "RNN_model"}
    assert df["PatientID"].str.fullmatch(r"[1-9]\d{35,38}").all()
    assert df["StudyID"].str.fullmatch(r"[1-9]\d{35,38}").all()
    assert (df == "None").any().any() and (df["Labels"] == "").sum() == 1
    assert df.groupby("PatientID").size().max() > 1
    items = [ast.literal_eval(s) for s in df["Labels"] if s]
    flat = [x for lst in items for x in lst]
    assert "" in flat and any(x.startswith(" ") for x in flat) and "normal" in flat
    assert set(df["BitsStored_DICOM"]) == {"12", "10"}
    for row in df.iloc[::3].itertuples():
        with Image.open(root / row.ImageDir / row.ImageID) as im:
            arr = np.asarray(im)
            assert im.format == "PNG" and not im.text
        assert arr.dtype == np.uint16 and arr.shape == (int(row.Rows_DICOM), int(row.Columns_DICOM))
        assert 2 ** (int(row.BitsStored_DICOM) - 2) < arr.max() < 2 ** int(row.BitsStored_DICOM)


# --- VinDr-CXR ------------------------------------------------------------------------------------


def test_vindr_matches_the_documented_format(demo_root: Path) -> None:
    ann = demo_root / "vindr-cxr/1.0.0/annotations"
    train = pd.read_csv(ann / "image_labels_train.csv")
    test = pd.read_csv(ann / "image_labels_test.csv")
    labels = list(train.columns[2:])
    assert list(train.columns[:2]) == ["image_id", "rad_id"] and len(labels) == 28
    assert labels[:3] == ["Aortic enlargement", "Atelectasis", "Calcification"] and labels[-2:] == [
        "Other diseases", "No finding"]
    assert list(test.columns) == ["image_id", *(c.replace("Other diseases", "Other disease") for c in labels)]
    assert (train.groupby("image_id")["rad_id"].nunique() == 3).all()
    assert train["rad_id"].str.fullmatch(r"R([1-9]|1[0-7])").all()
    assert train["image_id"].str.fullmatch(r"[0-9a-f]{32}").all()
    for df in (train, test):
        values = df[[c for c in df.columns if c not in ("image_id", "rad_id")]]
        assert set(np.unique(values.to_numpy())) == {0, 1}
        assert ((values.iloc[:, :-1].sum(axis=1) == 0) == (values.iloc[:, -1] == 1)).all()
    assert not set(train["image_id"]) & set(test["image_id"])
    boxes = pd.read_csv(ann / "annotations_train.csv")
    assert list(boxes.columns) == ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
    assert list(pd.read_csv(ann / "annotations_test.csv").columns) == list(boxes.columns)
    kaggle = set(pd.read_csv(_txv_data("vinbigdata-train.csv.gz"), usecols=["class_name"])["class_name"])
    assert len(kaggle - {"No finding"}) == 14
    assert kaggle - {"No finding"} <= set(demo_vindr.LOCAL_LABELS)
    assert set(boxes["class_name"]) <= set(demo_vindr.LOCAL_LABELS) | {"No finding"}
    assert len(set(boxes["class_name"]) & kaggle) >= 10
    nf = boxes["class_name"] == "No finding"
    assert boxes.loc[nf, ["x_min", "y_min", "x_max", "y_max"]].isna().all().all()
    assert ((boxes.loc[~nf, "x_max"] > boxes.loc[~nf, "x_min"]) & (boxes.loc[~nf, "y_max"] > boxes.loc[~nf, "y_min"])).all()


# --- UKA-CXR --------------------------------------------------------------------------------------


def test_uka_matches_the_defined_format(demo_root: Path) -> None:
    root = demo_root / "uka-cxr"
    assert _first_line(root / "master_list.csv") == (
        "image_id,split,subset,age,patient_sex,subject_id,cardiomegaly,congestion,pleural_effusion_right,"
        "pleural_effusion_left,pneumonic_infiltrates_right,pneumonic_infiltrates_left,atelectasis_right,"
        "atelectasis_left,pneumothorax_right,pneumothorax_left,healthy")
    df = pd.read_csv(root / "master_list.csv")
    graded = list(df.columns[6:-1])
    assert set(df["split"]) == {"train", "valid", "test"}
    assert (df.groupby("subject_id")["split"].nunique() == 1).all() and df.groupby("subject_id").size().max() > 1
    assert set(df["cardiomegaly"]) == {1, 2, 3, 4}
    assert set(np.unique(df[graded].to_numpy())) == {1, 2, 3, 4, 5}
    assert (df["healthy"] == (~df[graded].isin([3, 4]).any(axis=1)).astype(int)).all()
    for row in df.itertuples():
        assert (root / "images" / str(row.subset) / f"{row.image_id}.dcm").is_file()


def test_every_dicom_decodes_with_its_declared_format(demo_root: Path) -> None:
    files = sorted((demo_root / "vindr-cxr/1.0.0").glob("*/*.dicom")) + sorted(
        (demo_root / "uka-cxr/images").glob("*/*.dcm"))
    seen = set()
    for path in files:
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
        seen.add((ds.file_meta.TransferSyntaxUID, ds.PhotometricInterpretation))
        assert arr.dtype == np.uint16 and arr.shape == (ds.Rows, ds.Columns), path
        assert 12 <= ds.BitsStored <= 15 and arr.max() < 2**ds.BitsStored, path
        assert 256 <= min(arr.shape) and max(arr.shape) <= 400
        assert ds.Modality in ("CR", "DX") and ds.ViewPosition in ("PA", "AP")
        assert float(ds.WindowWidth) > 0 and ds.RescaleSlope == 1
    assert seen == {(ts, pi) for ts in (ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless)
                    for pi in ("MONOCHROME1", "MONOCHROME2")}


# --- learnability ---------------------------------------------------------------------------------


def test_drawn_findings_are_learnable_on_nih_pngs(demo_root: Path) -> None:
    root = demo_root / "chestxray14"
    df = pd.read_csv(root / "Data_Entry_2017_v2020.csv")
    x = np.stack([_features(np.asarray(Image.open(root / "images" / n).convert("L"))) for n in df["Image Index"]])
    for label in ("Cardiomegaly", "Effusion"):
        y = df["Finding Labels"].str.split("|").apply(lambda t, lab=label: lab in t).to_numpy(int)
        auc = _cv_auroc(x, y)
        print(f"\nNIH {label}: {y.sum()} positives, 5-fold logistic AUROC {auc:.3f}")
        assert auc > 0.85, label


def test_drawn_findings_are_learnable_on_vindr_dicoms(demo_root: Path) -> None:
    root = demo_root / "vindr-cxr/1.0.0"
    readings = pd.read_csv(root / "annotations/image_labels_train.csv")
    majority = readings.drop(columns="rad_id").groupby("image_id", sort=False).sum() >= 2
    x = np.stack([_features(_dicom_display(root / "train" / f"{i}.dicom")) for i in majority.index])
    for label in ("Cardiomegaly", "Pleural effusion"):
        auc = _cv_auroc(x, majority[label].to_numpy(int))
        print(f"\nVinDr {label}: 5-fold logistic AUROC {auc:.3f}")
        assert auc > 0.85, label


def test_a_model_fitted_on_mimic_transfers_to_nih(demo_root: Path) -> None:
    """Findings are drawn the same way in every dataset, so pre-training on one helps another."""
    m = demo_root / "mimic-cxr-jpg/2.1.0"
    meta = pd.read_csv(m / "mimic-cxr-2.0.0-metadata.csv.gz")
    rows = meta[meta["ViewPosition"].isin(["PA", "AP"])].merge(
        pd.read_csv(m / "mimic-cxr-2.0.0-chexpert.csv.gz"), on=["subject_id", "study_id"])
    xm = np.stack([_features(np.asarray(Image.open(
        m / "files" / f"p{str(r.subject_id)[:2]}" / f"p{r.subject_id}" / f"s{r.study_id}" / f"{r.dicom_id}.jpg")))
        for r in rows.itertuples()])
    n = demo_root / "chestxray14"
    nih = pd.read_csv(n / "Data_Entry_2017_v2020.csv")
    xn = np.stack([_features(np.asarray(Image.open(n / "images" / i).convert("L"))) for i in nih["Image Index"]])
    for mimic_label, nih_label in (("Cardiomegaly", "Cardiomegaly"), ("Pleural Effusion", "Effusion")):
        clf = LogisticRegression(C=0.1, max_iter=2000).fit(xm, (rows[mimic_label] == 1).to_numpy(int))
        y = nih["Finding Labels"].str.split("|").apply(lambda t, lab=nih_label: lab in t).to_numpy(int)
        auc = float(roc_auc_score(y, clf.predict_proba(xn)[:, 1]))
        print(f"\nMIMIC -> NIH {nih_label}: AUROC {auc:.3f}")
        assert auc > 0.8, nih_label

