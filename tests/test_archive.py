"""`cxrbench archive` / `cxrbench verify` on fabricated result trees holding a real chest DICOM.

The source "dataset" is a VinDr-CXR layout whose one image is pydicom-data's real chest CR
(RG1_UNCR.dcm: PatientName CompressedSamples^RG1, PatientID 9RG1, birth date 19400305, ...), so the
PHI check runs on genuine header values.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
import pytest
from cxrbench.archive import (
    CRATE_NAME,
    MANIFEST_NAME,
    ArchiveError,
    IdentifierIndex,
    build_archive,
    header_identifiers,
)
from cxrbench.archive_verify import verify_archive
from cxrbench.cli import main
from pydicom.data import get_testdata_file
from tarfiles import extract_all

DICOM = Path(get_testdata_file("RG1_UNCR.dcm", download=False))
HEADER = pydicom.dcmread(DICOM, stop_before_pixels=True)
PATIENT_NAME = str(HEADER.PatientName)  # CompressedSamples^RG1
PATIENT_ID = str(HEADER.PatientID)  # 9RG1
BIRTH = str(HEADER.PatientBirthDate)  # 19400305
IMAGE_ID = "a0b1c2d3e4f5"


def _write_tree(tmp: Path) -> tuple[dict, Path]:
    """A source dataset (VinDr layout) and a results tree with every kind of file a run leaves."""
    root = tmp / "data" / "vindr"
    (root / "train").mkdir(parents=True)
    shutil.copy(DICOM, root / "train" / f"{IMAGE_ID}.dicom")
    (root / "annotations").mkdir()
    label_csv = "image_id,rad_id,Aortic enlargement,No finding\n" + f"{IMAGE_ID},R1,0,1\n"
    (root / "annotations" / "image_labels_train.csv").write_text(label_csv)
    (root / "annotations" / "image_labels_test.csv").write_text("image_id,Aortic enlargement,No finding\n")

    res = tmp / "results"
    ds = res / "vindr"
    ds.mkdir(parents=True)
    pd.DataFrame(
        {"image_id": [IMAGE_ID], "patient_id": [IMAGE_ID], "source_path": [f"train/{IMAGE_ID}.dicom"]}
    ).to_parquet(ds / "index.parquet")
    pd.DataFrame({"image_id": [IMAGE_ID], "y_cardiomegaly": [1.0]}).to_parquet(ds / "labels.parquet")
    (ds / "labels.summary.csv").write_text("split,n_images\ntest,1\n")
    (ds / "labels.summary.md").write_text("| split | n |\n|---|---|\n| test | 1 |\n")
    png = ds / "png" / "paper-64" / "shard-0"
    png.mkdir(parents=True)
    (png / f"{IMAGE_ID}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)
    cache = ds / "cache" / "paper-64"
    cache.mkdir(parents=True)
    np.save(cache / "test.npy", np.zeros((1, 8, 8), np.uint8))

    stats = res / "stats" / "vindr"
    stats.mkdir(parents=True)
    np.save(stats / "bootstrap_indices.npy", np.arange(20, dtype=np.int32).reshape(4, 5))
    (stats / "bootstrap.json").write_text(json.dumps({"seed": 1, "n_bootstrap": 4}))
    pd.DataFrame({"init": ["random"], "label": ["macro"], "auroc": [0.8123456789]}).to_parquet(
        stats / "metrics.parquet"
    )
    (stats / "metrics.csv").write_text("init,label,auroc\nrandom,macro,0.8123456789\n")
    tables, figures = res / "tables", res / "figures"
    tables.mkdir()
    figures.mkdir()
    (tables / "auroc_main.csv").write_text("init,vindr\nrandom,0.8123456789\n")
    (tables / "auroc_main.md").write_text("| init | vindr |\n|---|---|\n| random | 81.23 |\n")
    (tables / "auroc_main.tex").write_text("\\begin{tabular}{ll}random & 81.23\\end{tabular}\n")
    (figures / "forest.pdf").write_bytes(b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n")
    (figures / "forest.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)
    run = res / "runs" / "random" / "vindr"
    run.mkdir(parents=True)
    pd.DataFrame(
        {
            "split": ["test"],
            "image_id": [IMAGE_ID],
            "patient_id": [IMAGE_ID],
            "label": ["cardiomegaly"],
            "target": [1.0],
            "score": [0.7],
        }
    ).to_parquet(run / "predictions.parquet")
    (run / "history.csv").write_text("epoch,loss\n1,0.5\n")
    (run / "run.json").write_text(json.dumps({"init": "random", "seed": 3}))
    (run / "best.pt").write_bytes(b"weights")
    (run / "checkpoint.pt").write_bytes(b"weights")
    (res / "README.md").write_text("# results\n")
    config = {
        "results": str(res),
        "seed": 1,
        "demo": {"enabled": False},
        "archive": {"identifiers": "pseudonymise", "secret": str(tmp / "secret" / "key")},
        "datasets": {"vindr": {"adapter": "vindr", "root": str(root), "label_set": "study_vindr"}},
        "initialisations": {"random": {"model": "vit_tiny_patch16_224", "source": "none"}},
    }
    return config, res


def _build(tmp: Path, config: dict, res: Path, name: str = "archive.tar.gz") -> Path:
    out = tmp / "out" / name
    build_archive(config, results=res, out=out, report=False)
    return out


def _members(tar_path: Path) -> list[str]:
    with tarfile.open(tar_path) as tar:
        return [m.name for m in tar.getmembers() if m.isfile()]


def _unpack(tar_path: Path, dest: Path) -> Path:
    with tarfile.open(tar_path) as tar:
        extract_all(tar, dest)
    return dest / tar_path.name.removesuffix(".tar.gz")


@pytest.fixture()
def tree(tmp_path: Path) -> tuple[dict, Path]:
    return _write_tree(tmp_path)


def test_archive_holds_the_publication_files_and_nothing_else(tmp_path: Path, tree) -> None:
    config, res = tree
    names = {n.split("/", 1)[1] for n in _members(_build(tmp_path, config, res))}
    expected = {
        "results/tables/auroc_main.csv",
        "results/tables/auroc_main.md",
        "results/tables/auroc_main.tex",
        "results/figures/forest.pdf",
        "results/stats/vindr/bootstrap_indices.npy",
        "results/stats/vindr/bootstrap.json",
        "results/stats/vindr/metrics.parquet",
        "results/stats/vindr/metrics.csv",
        "results/runs/random/vindr/predictions.parquet",
        "results/runs/random/vindr/history.csv",
        "results/runs/random/vindr/run.json",
        "results/vindr/labels.summary.csv",
        "results/vindr/labels.summary.md",
        "results/README.md",
        "metadata/config.resolved.yaml",
        "metadata/software.json",
        "metadata/git.json",
        "workflow/Snakefile",
        "workflow/rules/common.smk",
        "workflow/schemas/config.schema.yaml",
        CRATE_NAME,
        MANIFEST_NAME,
    }
    assert expected <= names, expected - names
    assert not [n for n in names if n.endswith((".png", ".dicom", ".dcm", ".pt"))]
    assert not [n for n in names if "/png/" in n or "/cache/" in n or n.endswith(("index.parquet", "labels.parquet"))]
    assert not [n for n in names if "annotations" in n]


def test_manifest_crate_and_metadata(tmp_path: Path, tree) -> None:
    config, res = tree
    top = _unpack(_build(tmp_path, config, res), tmp_path / "unpacked")
    assert verify_archive(top) == []
    software = json.loads((top / "metadata" / "software.json").read_text())
    assert software["packages"]["cxrbench"] and software["packages"]["snakemake"]
    assert "commit" in json.loads((top / "metadata" / "git.json").read_text())
    graph = {e["@id"]: e for e in json.loads((top / CRATE_NAME).read_text())["@graph"]}
    root = graph["./"]
    profiles = {p["@id"] for p in root["conformsTo"]}
    assert "https://w3id.org/ro/wfrun/workflow/0.5" in profiles and "https://w3id.org/ro/wfrun/process/0.5" in profiles
    assert root["mainEntity"]["@id"] == "workflow/Snakefile"
    assert "ComputationalWorkflow" in graph["workflow/Snakefile"]["@type"]
    action = graph[root["mentions"][0]["@id"]]
    assert action["@type"] == "CreateAction" and action["instrument"]["@id"] == "workflow/Snakefile"
    results = {r["@id"] for r in action["result"]}
    assert "results/runs/random/vindr/predictions.parquet" in results
    objects = {o["@id"] for o in action["object"]}
    assert {"metadata/config.resolved.yaml", "#dataset-vindr"} <= objects
    pred = graph["results/runs/random/vindr/predictions.parquet"]
    assert len(pred["sha256"]) == 64


def test_verify_detects_tampering(tmp_path: Path, tree) -> None:
    config, res = tree
    top = _unpack(_build(tmp_path, config, res), tmp_path / "unpacked")
    (top / "results" / "tables" / "auroc_main.csv").write_text("init,vindr\nrandom,0.99\n")
    (top / "results" / "extra.txt").write_text("x")
    (top / "results" / "runs" / "random" / "vindr" / "history.csv").unlink()
    problems = "\n".join(verify_archive(top))
    assert "auroc_main.csv: SHA-256 differs" in problems
    assert "extra.txt: present but not listed" in problems
    assert "history.csv: listed in MANIFEST.sha256 but missing" in problems
    assert main(["verify", str(tmp_path / "unpacked")]) == 1


def test_identical_inputs_give_a_byte_identical_archive(tmp_path: Path, tree, monkeypatch) -> None:
    config, res = tree
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    a = _build(tmp_path, config, res, "a.tar.gz").read_bytes()
    b = _build(tmp_path, config, res, "b.tar.gz")
    # Same content under another top-level name: compare the unpacked trees' manifests instead.
    top_a = _unpack(tmp_path / "out" / "a.tar.gz", tmp_path / "ua")
    top_b = _unpack(b, tmp_path / "ub")
    assert (top_a / MANIFEST_NAME).read_text() == (top_b / MANIFEST_NAME).read_text()
    assert _build(tmp_path, config, res, "a.tar.gz").read_bytes() == a


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("tables/auroc_main.md", PATIENT_NAME),  # as written in the header
        ("tables/auroc_main.tex", PATIENT_NAME.replace("^", " ").lower()),  # other separator and case
        ("runs/random/vindr/history.csv", "1940-03-05"),  # the birth date in ISO form
        ("README.md", f"note: patient {PATIENT_ID} excluded"),
    ],
)
def test_identifier_in_a_text_file_fails_the_archive(tmp_path: Path, tree, where: str, value: str) -> None:
    config, res = tree
    path = res / where
    path.write_text(path.read_text() + f"\n{value}\n")
    with pytest.raises(ArchiveError, match=rf"results/{where}: contains the patient-identifying value"):
        _build(tmp_path, config, res)
    assert not (tmp_path / "out" / "archive.tar.gz").exists()


def test_identifier_inside_compressed_parquet_fails_the_archive(tmp_path: Path, tree) -> None:
    config, res = tree
    config["archive"]["identifiers"] = "keep"  # pseudonymise would hash the patient_id column
    run = res / "runs" / "random" / "vindr"
    table = pa.table(
        {
            "split": ["test"] * 50,
            "image_id": [f"i{k}" for k in range(50)],
            "patient_id": [PATIENT_ID] * 50,
            "label": ["cardiomegaly"] * 50,
            "target": [1.0] * 50,
            "score": [0.5] * 50,
        }
    )
    pq.write_table(table, run / "predictions.parquet", compression="zstd", use_dictionary=True)
    hit = r"contains the patient-identifying value '9RG1' \(DICOM PatientID, column patient_id\)"
    with pytest.raises(ArchiveError, match=rf"predictions.parquet: {hit}"):
        _build(tmp_path, config, res)


def test_demo_manifest_identifiers_are_checked_too(tmp_path: Path, tree) -> None:
    config, res = tree
    (res / "tables" / "auroc_main.md").write_text("FAKE DEMO HOSPITAL\n")
    with pytest.raises(ArchiveError, match="FAKE DEMO HOSPITAL"):
        build_archive(
            config, results=res, out=tmp_path / "x.tar.gz", report=False, extra_identifiers=["FAKE DEMO HOSPITAL"]
        )


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda res: shutil.copy(DICOM, res / "tables" / "renamed.csv"), "its content is a DICOM file"),
        (
            lambda res: (res / "tables" / "thumb.csv").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 8),
            "its content is a PNG image",
        ),
        (lambda res: (res / "tables" / "x.csv").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 8), "JPEG image"),
    ],
)
def test_images_disguised_as_results_are_refused(tmp_path: Path, tree, make, reason: str) -> None:
    config, res = tree
    make(res)
    with pytest.raises(ArchiveError, match=reason):
        _build(tmp_path, config, res)


def test_copy_of_a_source_label_file_is_refused(tmp_path: Path, tree) -> None:
    config, res = tree
    src = Path(config["datasets"]["vindr"]["root"]) / "annotations" / "image_labels_train.csv"
    shutil.copy(src, res / "tables" / "labels_copy.csv")
    shutil.copy(src, res / "stats" / "vindr" / "image_labels_train.csv")
    with pytest.raises(ArchiveError) as err:
        _build(tmp_path, config, res)
    assert "labels_copy.csv: refused because it is a copy of a source label file" in str(err.value)
    assert "image_labels_train.csv: refused because it has the name of a source label file" in str(err.value)


def test_identifier_matching_is_token_exact() -> None:
    index = IdentifierIndex.build([PATIENT_NAME, "81234567", PATIENT_ID], dates=[BIRTH])
    assert index.find("auroc 0.81234567 and 181234567") == set()  # digits inside numbers are not IDs
    assert index.find("id 81234567,") == {"81234567"}
    assert index.find("CompressedSamples^RG1x") == set()
    assert index.find("compressedsamples rg1") == {PATIENT_NAME}
    assert index.find("born 1940-03-05") == {BIRTH}
    assert IdentifierIndex.build(["ANONYMOUS", "A1", ""]).values == {}


def test_header_values_of_real_and_demo_dicoms_are_collected(tmp_path: Path) -> None:
    from cxrbench.demo import uka, vindr
    from cxrbench.demo.common import Identifiers

    values = header_identifiers(DICOM)
    expected = {PATIENT_NAME, PATIENT_ID, str(HEADER.AccessionNumber), str(HEADER.OtherPatientIDs), BIRTH}
    assert expected | {str(HEADER.SOPInstanceUID), str(HEADER.StudyInstanceUID)} <= set(values)
    assert values[BIRTH] == "PatientBirthDate" and values[str(HEADER.AccessionNumber)] == "AccessionNumber"
    ids = Identifiers()
    vindr.write(tmp_path / "vindr", seed=7, n_images=12, identifiers=ids)
    uka.write(tmp_path / "uka", seed=7, n_images=12, identifiers=ids)
    values = {}
    for path in sorted(tmp_path.rglob("*.dicom")) + sorted(tmp_path.rglob("*.dcm")):
        values |= header_identifiers(path)
    # Everything the demo lists is found in the headers, except the non-patient referrer/institution
    # values, which the archive checks from demo-manifest.json.
    assert set(ids.sorted()) - set(values) <= {"FAKE^REFERRER", "FAKE DEMO HOSPITAL"}


def test_cli_archive_and_verify(tmp_path: Path, tree) -> None:
    config, res = tree
    out = tmp_path / "cli" / "pub.tar.gz"
    rc = main(["archive", "--settings", json.dumps(config), "--results", str(res), "--out", str(out), "--no-report"])
    assert rc == 0 and out.is_file()
    _unpack(out, tmp_path / "cli-unpacked")
    assert main(["verify", str(tmp_path / "cli-unpacked")]) == 0
    (res / "tables" / "auroc_main.md").write_text(PATIENT_ID)
    assert (
        main(
            [
                "archive",
                "--settings",
                json.dumps(config),
                "--results",
                str(res),
                "--out",
                str(tmp_path / "y.tar.gz"),
                "--no-report",
            ]
        )
        == 1
    )
