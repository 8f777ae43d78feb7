"""The archive's identifier check on odd real sources (issue 10 §1).

A `generic_csv` dataset whose sources are variants of pydicom-data's real chest CR (RG1_UNCR.dcm): a
header-less ACR-NEMA file, DICOMs without an extension (one of them never preprocessed), a DICOM named
`.png`, an empty and a garbage `.dcm`, and a real PNG. One image id equals its DICOM AccessionNumber.
The archive must pseudonymise every id (default) or, with `keep`, refuse; unreadable sources are
quarantined and listed, never fatal; `cxrbench verify` catches what an archive should not hold.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import tarfile
from pathlib import Path

import jsonschema
import pandas as pd
import pyarrow.parquet as pq
import pydicom
import pytest
from cxrbench.archive import (
    MANIFEST_NAME,
    ArchiveError,
    archive_options,
    build_archive,
    scan_sources,
    sha256_file,
)
from cxrbench.archive_verify import verify_archive
from cxrbench.cli import main
from cxrbench.config import load_schema
from cxrbench.imaging.decode import decode
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from tarfiles import extract_all

RG1 = Path(get_testdata_file("RG1_UNCR.dcm", download=False))
ACCESSION = "ACC7781234"  # also the image id of scans/IMG0001: a PACS export named images by accession
HEADERLESS_PATIENT = "HLPAT0042"
NO_MANIFEST_PATIENT = "NOMANIFEST77"
DISGUISED_NAME = "HIDDEN^PNGNAME"
# image id -> (source path, patient id, preprocessing source_format or None when not preprocessed)
SOURCES = {
    "hl-0001": ("scans/headerless.img", "pat-a", "dicom"),
    ACCESSION: ("scans/IMG0001", "pat-b", "dicom"),
    "nomanifest-0002": ("scans/IMG0002", "pat-c", None),
    "disguised-0003": ("scans/disguised.png", "pat-d", "dicom"),
    "empty-0004": ("scans/empty.dcm", "pat-e", None),
    "garbage-0005": ("scans/garbage.dcm", "pat-f", "dicom"),  # today's manifests call garbage dicom
    "photo-0006": ("scans/photo.png", "pat-g", "png8"),
}
DECODED = ["hl-0001", ACCESSION, "disguised-0003", "photo-0006"]  # what reaches predictions


def _dicom(path: Path, *, headerless: bool = False, **values: str) -> None:
    """A copy of the real RG1 CR with some header values replaced; header-less = no preamble/file meta."""
    ds = pydicom.dcmread(RG1)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    if headerless:
        ds.preamble = None
        ds.file_meta = FileMetaDataset()
        pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    else:
        ds.save_as(path, enforce_file_format=True)


def _tree(tmp: Path, mode: str = "pseudonymise") -> tuple[dict, Path]:
    root = tmp / "data" / "odd"
    scans = root / "scans"
    scans.mkdir(parents=True)
    _dicom(scans / "headerless.img", headerless=True, PatientID=HEADERLESS_PATIENT, AccessionNumber="HLACC0042")
    _dicom(scans / "IMG0001", AccessionNumber=ACCESSION)
    _dicom(scans / "IMG0002", PatientID=NO_MANIFEST_PATIENT)
    _dicom(scans / "disguised.png", PatientName=DISGUISED_NAME)
    (scans / "empty.dcm").write_bytes(b"")
    (scans / "garbage.dcm").write_bytes(b"this is not a DICOM file, just some text exported by mistake\n" * 20)
    Image.new("L", (32, 32), 128).save(scans / "photo.png")
    labels = "id,file,patient,cardiomegaly\n" + "".join(f"{i},{p},{pt},1\n" for i, (p, pt, _) in SOURCES.items())
    (root / "labels.csv").write_text(labels)

    res = tmp / "results"
    ds_dir = res / "odd"
    (ds_dir / "png" / "paper-64").mkdir(parents=True)
    pd.DataFrame(
        {
            "image_id": list(SOURCES),
            "patient_id": [pt for _, pt, _ in SOURCES.values()],
            "source_path": [p for p, _, _ in SOURCES.values()],
        }
    ).to_parquet(ds_dir / "index.parquet")
    preprocessed = {i: fmt for i, (_, _, fmt) in SOURCES.items() if i != "nomanifest-0002"}
    pd.DataFrame(
        {
            "image_id": list(preprocessed),
            "source_format": list(preprocessed.values()),
            "status": ["ok" if i in DECODED else "rejected" for i in preprocessed],
        }
    ).to_parquet(ds_dir / "png" / "paper-64" / "manifest.parquet")
    (ds_dir / "labels.summary.csv").write_text("split,n_images\ntest,4\n")

    run = res / "runs" / "random" / "odd"
    run.mkdir(parents=True)
    patients = {i: pt for i, (_, pt, _) in SOURCES.items()}
    pd.DataFrame(
        {
            "split": ["test"] * len(DECODED),
            "image_id": DECODED,
            "patient_id": [patients[i] for i in DECODED],
            "label": ["cardiomegaly"] * len(DECODED),
            "target": [1.0, 0.0, 1.0, 0.0],
            "score": [0.9, 0.2, 0.7, 0.4],
        }
    ).to_parquet(run / "predictions.parquet")
    (run / "history.csv").write_text("epoch,loss\n1,0.5\n")
    (run / "run.json").write_text(json.dumps({"init": "random"}))
    stats = res / "stats" / "odd"
    stats.mkdir(parents=True)
    units = pd.DataFrame({"position": range(len(DECODED)), "unit_id": sorted(DECODED)})
    units.to_parquet(stats / "bootstrap_units.parquet")
    pd.DataFrame({"patient_id": [104578, 94254], "n": [1, 2]}).to_parquet(stats / "numeric_ids.parquet")
    (stats / "per_image.csv").write_text("image_id,score\n" + "".join(f"{i},0.5\n" for i in DECODED))
    (res / "tables").mkdir()
    (res / "tables" / "auroc_main.csv").write_text("init,odd\nrandom,0.75\n")
    config = {
        "results": str(res),
        "seed": 1,
        "demo": {"enabled": False},
        "archive": {"identifiers": mode, "secret": str(tmp / "keys" / "key")},
        "datasets": {
            "odd": {
                "adapter": "generic_csv",
                "root": str(root),
                "label_set": ["cardiomegaly"],
                "columns": {
                    "label_file": "labels.csv",
                    "image_id": "id",
                    "path": "file",
                    "patient_id": "patient",
                    "labels": {"cardiomegaly": "cardiomegaly"},
                },
            }
        },
        "initialisations": {"random": {"model": "vit_tiny_patch16_224", "source": "none"}},
    }
    return config, res


def _build(tmp: Path, config: dict, res: Path) -> Path:
    """Build without the Snakemake report; return the unpacked archive's top folder."""
    out = tmp / "out" / "pub.tar.gz"
    build_archive(config, results=res, out=out, report=False)
    with tarfile.open(out) as tar:
        extract_all(tar, tmp / "unpacked")
    return tmp / "unpacked" / "pub"


def _texts(top: Path) -> str:
    """Every archived byte as text, Parquet files as their decoded values."""
    parts = []
    for path in sorted(p for p in top.rglob("*") if p.is_file()):
        if path.suffix == ".parquet":
            parts.append(pq.read_table(path).to_pandas().to_csv())
        else:
            parts.append(path.read_bytes().decode("latin-1"))
    return "\n".join(parts)


def test_sources_are_identified_by_content_and_unreadable_ones_quarantined(tmp_path: Path) -> None:
    config, res = _tree(tmp_path)
    root = Path(config["datasets"]["odd"]["root"])
    headerless = decode(root / "scans" / "headerless.img")
    assert headerless.info.source_format == "dicom" and headerless.pixels.ndim == 2
    scan = scan_sources(res, config["datasets"])
    # header-less, two without extension (one never preprocessed), one named .png
    assert scan.headers_read == 4
    assert {ACCESSION, HEADERLESS_PATIENT, NO_MANIFEST_PATIENT, DISGUISED_NAME} <= set(scan.values)
    assert scan.values[ACCESSION] == "AccessionNumber"
    assert {(q.image_id, q.reason.split(" ")[0]) for q in scan.quarantined} == {
        ("empty-0004", "source"),
        ("garbage-0005", "no"),
    }
    assert all(q.path.name in {"empty.dcm", "garbage.dcm"} for q in scan.quarantined)


def test_default_archive_pseudonymises_every_id_and_lists_quarantined_sources(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config, res = _tree(tmp_path)
    assert archive_options({})["identifiers"] == "pseudonymise"
    top = _build(tmp_path, config, res)
    key_file = tmp_path / "keys" / "key"
    key = bytes.fromhex(key_file.read_text().strip())
    assert key_file.stat().st_mode & 0o777 == 0o600

    blob = _texts(top)
    for raw in [*SOURCES, *(pt for _, pt, _ in SOURCES.values()), key_file.read_text().strip()]:
        assert raw not in blob, raw
    assert not list(top.rglob("*pseudonyms*")) and not list(top.rglob("key"))

    def pseudo(value: str) -> str:
        return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()

    pred = pd.read_parquet(top / "results" / "runs" / "random" / "odd" / "predictions.parquet")
    assert list(pred["image_id"]) == [pseudo(i) for i in DECODED]
    units = pd.read_parquet(top / "results" / "stats" / "odd" / "bootstrap_units.parquet")
    assert list(units["unit_id"]) == [pseudo(i) for i in sorted(DECODED)]
    per_image = pd.read_csv(top / "results" / "stats" / "odd" / "per_image.csv")
    numeric = pd.read_parquet(top / "results" / "stats" / "odd" / "numeric_ids.parquet")
    assert list(numeric["patient_id"]) == [pseudo("104578"), pseudo("94254")]
    assert list(per_image["image_id"]) == [pseudo(i) for i in DECODED]

    # The key holder re-joins published predictions to images with the table next to the key.
    mapping = pd.read_csv(key_file.with_name("pub.pseudonyms.csv"), dtype=str)
    assert key_file.with_name("pub.pseudonyms.csv").stat().st_mode & 0o777 == 0o600
    joined = pred.merge(mapping[mapping["kind"] == "image_id"], left_on="image_id", right_on="pseudonym")
    assert list(joined["id"]) == DECODED

    graph = json.loads((top / "ro-crate-metadata.json").read_text())["@graph"]
    dataset = next(e for e in graph if e["@id"] == "#dataset-odd")
    listed = {e["@id"]: e for e in graph if e.get("@type") == "PropertyValue"}
    assert sorted(listed[ref["@id"]]["value"] for ref in dataset["additionalProperty"]) == sorted(
        [pseudo("empty-0004"), pseudo("garbage-0005")]
    )
    assert "garbage.dcm" in caplog.text and "empty.dcm" in caplog.text
    assert verify_archive(top, workdir=tmp_path) == []


def test_keep_refuses_an_id_equal_to_a_header_identifier(tmp_path: Path) -> None:
    config, res = _tree(tmp_path, mode="keep")
    with pytest.raises(ArchiveError) as err:
        _build(tmp_path, config, res)
    text = str(err.value)
    for rel, column in [
        ("results/runs/random/odd/predictions.parquet", "image_id"),
        ("results/stats/odd/bootstrap_units.parquet", "unit_id"),
    ]:
        hit = f"contains the patient-identifying value {ACCESSION!r} (DICOM AccessionNumber, column {column})"
        assert f"{rel}: {hit}" in text
    assert "results/stats/odd/per_image.csv: contains the patient-identifying value" in text
    assert not (tmp_path / "out" / "pub.tar.gz").exists()
    assert not (tmp_path / "keys").exists()  # keep needs no key


def test_keep_archive_without_a_collision_is_built(tmp_path: Path) -> None:
    config, res = _tree(tmp_path, mode="keep")
    img = Path(config["datasets"]["odd"]["root"]) / "scans" / "IMG0001"
    _dicom(img, AccessionNumber="OTHER-ACC-1")
    top = _build(tmp_path, config, res)
    assert ACCESSION in set(pd.read_parquet(top / "results/runs/random/odd/predictions.parquet")["image_id"])
    assert verify_archive(top, workdir=tmp_path) == []


def test_verify_catches_a_header_identifier_in_a_keep_archive(tmp_path: Path) -> None:
    """An archive that shipped an AccessionNumber (its DICOM was unreadable when it was built) fails verify."""
    config, res = _tree(tmp_path, mode="keep")
    img = Path(config["datasets"]["odd"]["root"]) / "scans" / "IMG0001"
    shutil.move(img, tmp_path / "away")
    top = _build(tmp_path, config, res)  # IMG0001 missing: quarantined, its accession number unknown
    shutil.move(tmp_path / "away", img)
    problems = "\n".join(verify_archive(top, workdir=tmp_path))
    hit = f"contains the patient-identifying value {ACCESSION!r} (DICOM AccessionNumber, column image_id)"
    assert f"results/runs/random/odd/predictions.parquet: {hit}" in problems
    assert main(["verify", str(top), "--workdir", str(tmp_path)]) == 1
    # Where the sources are not reachable (a downloaded archive) the scan is skipped, the rest verifies.
    shutil.move(tmp_path / "data", tmp_path / "gone")
    assert verify_archive(top, workdir=tmp_path) == []


def test_verify_catches_raw_ids_in_a_pseudonymised_archive(tmp_path: Path) -> None:
    config, res = _tree(tmp_path)
    top = _build(tmp_path, config, res)
    rel = "results/runs/random/odd/predictions.parquet"
    shutil.copy(res / "runs" / "random" / "odd" / "predictions.parquet", top / rel)
    manifest = top / MANIFEST_NAME
    lines = [
        f"{sha256_file(top / rel)}  {rel}" if line.endswith(rel) else line for line in manifest.read_text().splitlines()
    ]
    manifest.write_text("\n".join(lines) + "\n")
    shutil.move(tmp_path / "data", tmp_path / "gone")
    problems = "\n".join(verify_archive(top, workdir=tmp_path))  # needs no sources
    assert f"{rel}: column image_id holds 'hl-0001', not a pseudonym" in problems
    assert f"{rel}: column patient_id holds 'pat-a', not a pseudonym" in problems


def test_raw_id_outside_the_id_columns_refuses_a_pseudonymised_archive(tmp_path: Path) -> None:
    config, res = _tree(tmp_path)
    (res / "runs" / "random" / "odd" / "history.csv").write_text("epoch,loss,note\n1,0.5,worst disguised-0003\n")
    with pytest.raises(ArchiveError, match=r"history.csv: contains the raw image/patient id 'disguised-0003'"):
        _build(tmp_path, config, res)


def test_the_key_must_lie_outside_results(tmp_path: Path) -> None:
    config, res = _tree(tmp_path)
    config["archive"]["secret"] = str(res / "secret" / "key")
    with pytest.raises(ArchiveError, match=r"config key 'archive.secret'.*inside the results folder"):
        _build(tmp_path, config, res)
    assert not (res / "secret").exists()


def test_an_existing_key_is_reused_and_a_malformed_one_refused(tmp_path: Path) -> None:
    config, res = _tree(tmp_path)
    key_file = tmp_path / "keys" / "key"
    key_file.parent.mkdir()
    key_file.write_text("ab" * 32 + "\n")
    os.chmod(key_file, 0o600)
    top = _build(tmp_path, config, res)
    pred = pd.read_parquet(top / "results/runs/random/odd/predictions.parquet")
    assert pred["image_id"][0] == hmac.new(b"\xab" * 32, b"hl-0001", hashlib.sha256).hexdigest()
    key_file.write_text("not a key")
    with pytest.raises(ArchiveError, match=r"key.*is not a 64-digit hex key"):
        build_archive(config, results=res, out=tmp_path / "again.tar.gz", report=False)


def test_schema_declares_the_archive_options() -> None:
    section = load_schema()["properties"]["archive"]
    jsonschema.validate({"identifiers": "keep", "secret": "/secure/key"}, section)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"identifiers": "hash"}, section)
    assert archive_options({}) == {"identifiers": "pseudonymise", "secret": ".cxrbench-secret/key"}
    with pytest.raises(ArchiveError, match="archive.identifiers"):
        archive_options({"archive": {"identifiers": "hash"}})
