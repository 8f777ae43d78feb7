"""Malformed inputs become quarantine rows with clear reasons; the shard still succeeds."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cxrbench.imaging.pipeline import Recipe
from cxrbench.preprocess.runner import MANIFEST_COLUMNS, process_shard
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


def _dicom(arr: np.ndarray | None = None, *, sop: str = "1.2.840.10008.5.1.4.1.1.1", ts=ExplicitVRLittleEndian) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    ds.file_meta.MediaStorageSOPClassUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = sop
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    if arr is not None:
        ds.set_pixel_data(arr, photometric_interpretation="MONOCHROME2", bits_stored=12)
    return ds


def _good() -> np.ndarray:
    return (np.add.outer(np.arange(48), np.arange(48)) * 40).astype(np.uint16)


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _make_malformed(root: Path) -> dict[str, str]:
    """Write one file per malformed kind; return {file name: expected reason code}."""
    expected = {}

    def save(name: str, ds: Dataset, code: str) -> None:
        ds.save_as(root / name, enforce_file_format=True)
        expected[name] = code

    (root / "empty.png").write_bytes(b"")
    expected["empty.png"] = "zero_size"
    good = root / "good.dcm"
    _dicom(_good()).save_as(good, enforce_file_format=True)
    data = good.read_bytes()
    (root / "truncated.dcm").write_bytes(data[: len(data) - 2000])
    expected["truncated.dcm"] = "truncated"
    save("nopixels.dcm", _dicom(None), "no_pixel_data")
    sr = _dicom(None, sop="1.2.840.10008.5.1.4.1.1.88.11")  # Basic Text SR
    save("report.dcm", sr, "non_image_sop_class")
    odd = _dicom(_good())
    odd.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video
    from pydicom.encaps import encapsulate

    odd.PixelData = encapsulate([b"\x00" * 64])
    odd["PixelData"].VR = "OB"
    save("mpeg.dcm", odd, "unsupported_transfer_syntax")
    zero = _dicom(_good())
    zero.Rows = 0
    save("zerorows.dcm", zero, "zero_size")
    multi = _dicom(np.stack([_good(), _good()]))
    save("multiframe.dcm", multi, "multi_frame")
    flat = _dicom(np.full((48, 48), 500, np.uint16))
    save("flat.dcm", flat, "constant_image")
    png = _png_bytes((_good() // 16).astype(np.uint8))
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    expected["truncated.png"] = "truncated"
    jpg = io.BytesIO()
    Image.fromarray((_good() // 16).astype(np.uint8)).save(jpg, format="JPEG")
    (root / "broken.jpg").write_bytes(jpg.getvalue()[:200])
    expected["broken.jpg"] = "truncated"
    (root / "notes.txt").write_bytes(b"this is not an image at all\n" * 20)
    expected["notes.txt"] = "not_an_image"
    expected["missing.dcm"] = "missing_file"
    palette = _dicom(_good())
    palette.PhotometricInterpretation = "PALETTE COLOR"
    save("palette.dcm", palette, "palette_color")
    short = _dicom(_good())
    short.Rows = 64  # complete pixel data for 48 rows: the header disagrees with it, the file is not cut
    save("mismatch.dcm", short, "pixel_length_mismatch")
    # DICM marker, then noise whose first "tag" (E422,2279) is neither public nor private (even group).
    (root / "unreadable.dcm").write_bytes(data[:132] + b"\x22\xe4\x79\x22" + np.random.default_rng(1).bytes(400))
    expected["unreadable.dcm"] = "unreadable"
    frames = _dicom(_good())
    frames.NumberOfFrames = "1"
    frames.save_as(root / "badframes.dcm", enforce_file_format=True)
    raw = (root / "badframes.dcm").read_bytes()
    at = raw.index(b"\x28\x00\x08\x00IS\x02\x00") + 8  # (0028,0008) IS, length 2: value "1 " -> "x "
    (root / "badframes.dcm").write_bytes(raw[:at] + b"x " + raw[at + 2 :])
    expected["badframes.dcm"] = "invalid_attribute"
    hsv = _dicom(_good())
    hsv.PhotometricInterpretation = "HSV"
    save("hsv.dcm", hsv, "unsupported_photometric")
    (root / "garbage.dcm").write_bytes(np.random.default_rng(3).bytes(3000))
    expected["garbage.dcm"] = "not_an_image"
    (root / "text.png").write_bytes(b"hello, this is text and not a PNG at all\n" * 30)
    expected["text.png"] = "not_an_image"
    return expected


# source_format must mean "identified as DICOM" exactly: the archive scans those sources' headers.
FORMATS = {"garbage.dcm": "unknown", "text.png": "unknown", "notes.txt": "unknown", "empty.png": "unknown",
           "truncated.dcm": "dicom", "mismatch.dcm": "dicom", "unreadable.dcm": "dicom", "report.dcm": "dicom",
           "palette.dcm": "dicom",
           "truncated.png": "png8", "missing.dcm": None}


def test_malformed_inputs_each_get_a_quarantine_row(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    expected = _make_malformed(root)
    assert len(set(expected.values())) >= 10
    members = pd.DataFrame({"image_id": [*expected, "good"], "source_path": [*expected, "good.dcm"]})
    out = tmp_path / "shard-0"
    manifest = process_shard(members, root=root, out_dir=out, recipe=Recipe("paper", 32), workers=2)
    assert list(manifest.columns) == MANIFEST_COLUMNS and len(manifest) == len(members)
    by_id = manifest.set_index("image_id")
    for name, code in expected.items():
        row = by_id.loc[name]
        assert row["status"] == "rejected", name
        assert str(row["reason"]).startswith(code + ": "), (name, row["reason"])
        assert len(str(row["reason"])) > len(code) + 5 and pd.isna(row["output_path"])
    assert by_id.loc["good", "status"] == "ok" and (tmp_path / by_id.loc["good", "output_path"]).is_file()
    assert by_id.loc["mpeg.dcm", "transfer_syntax"] == "1.2.840.10008.1.2.4.100"
    for name, fmt in FORMATS.items():
        value = by_id.loc[name, "source_format"]
        assert (pd.isna(value) if fmt is None else value == fmt), (name, value)
    # One line each, and no machine path: the source appears only as its dataset-relative path.
    reasons = manifest["reason"].dropna().astype(str)
    assert not reasons.str.contains("\n").any() and not reasons.str.contains(str(tmp_path)).any()
    assert sorted(p.name for p in out.iterdir()) == ["good.png"]


def _manifest(tmp_path: Path, n_ok: int, n_bad: int) -> Path:
    rows = [
        {c: None for c in MANIFEST_COLUMNS} | {"image_id": f"i{k}", "source_path": f"i{k}.png", "status": "ok",
                                               "output_path": f"shard-0/i{k}.png"}
        for k in range(n_ok)
    ] + [
        {c: None for c in MANIFEST_COLUMNS} | {"image_id": f"b{k}", "source_path": f"b{k}.png", "status": "rejected",
                                               "reason": "truncated: test"}
        for k in range(n_bad)
    ]
    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    for col in ("bits_stored", "rows", "cols", "reduction"):
        frame[col] = frame[col].astype("Int64")
    for col in ("output_path", "source_format", "transfer_syntax", "photometric", "reason", "window"):
        frame[col] = frame[col].astype("string")
    path = tmp_path / "shard-0.manifest.parquet"
    frame.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize(("n_bad", "rc"), [(1, 0), (3, 1)])
def test_collect_enforces_rejected_fraction(tmp_path: Path, n_bad: int, rc: int) -> None:
    shard = _manifest(tmp_path, 18, n_bad)
    cmd = [sys.executable, "-m", "cxrbench.cli", "collect-shards", "--settings", '{"max_rejected_fraction": 0.1}',
           "--manifests", str(shard), "--out", str(tmp_path / "manifest.parquet"), "--rejected", str(tmp_path / "rej.parquet")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == rc, res.stderr
    if rc == 0:
        assert len(pd.read_parquet(tmp_path / "rej.parquet")) == n_bad
        assert len(pd.read_parquet(tmp_path / "manifest.parquet")) == 18 + n_bad
    else:
        assert "exceeds preprocess.max_rejected_fraction" in res.stderr and "truncated: 3" in res.stderr.replace("rejected/", "")


def test_verbose_preprocess_keeps_third_party_debug_quiet(tmp_path: Path) -> None:
    # `cxrbench -v preprocess` once wrote thousands of numba compiler lines per shard; a fresh numba cache
    # forces the compilation that produced them.
    root = tmp_path / "root"
    root.mkdir()
    _dicom(_good()).save_as(root / "a.dcm", enforce_file_format=True)
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    j2k = _dicom(_good())  # a corrupt JPEG 2000 stream: pydicom logs each failed plugin with a traceback
    j2k.file_meta.TransferSyntaxUID = JPEG2000Lossless
    j2k.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 60])
    j2k["PixelData"].VR = "OB"
    j2k.save_as(root / "b.dcm", enforce_file_format=True)
    (tmp_path / "members.tsv").write_text("image_id\tsource_path\na\ta.dcm\nb\tb.dcm\n")
    settings = '{"mode": "paper", "size": 16, "equalize": true, "reduced_resolution_decode": true}'
    cmd = [sys.executable, "-m", "cxrbench.cli", "-v", "preprocess", "--settings", settings,
           "--members", str(tmp_path / "members.tsv"), "--root", str(root), "--out-dir", str(tmp_path / "shard-0"),
           "--manifest", str(tmp_path / "shard-0.manifest.parquet")]
    env = {**__import__("os").environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, env=env)
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    assert any(" DEBUG cxrbench" in line or " INFO cxrbench" in line for line in lines)
    noisy = [line for line in lines if " DEBUG numba" in line or " DEBUG PIL" in line or " DEBUG matplotlib" in line]
    assert not noisy and len(lines) < 50, (len(noisy), len(lines))
    assert "decode_error" in res.stderr and "Traceback" not in res.stderr


def test_unexpected_exception_is_internal_error_with_source_facts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cxrbench.imaging import pipeline
    from cxrbench.preprocess.runner import process_one

    def broken(decoded, recipe):
        raise RuntimeError(f"kernel failed in {tmp_path}/site-packages/mod.py\nsecond line")

    monkeypatch.setattr(pipeline, "render", broken)
    _dicom(_good()).save_as(tmp_path / "a.dcm", enforce_file_format=True)
    row = process_one(("a", "a.dcm", str(tmp_path / "a.dcm"), str(tmp_path / "out"), "out", Recipe("paper", 16)))
    assert row["status"] == "rejected" and row["reason"].startswith("internal_error: RuntimeError: kernel failed in ")
    assert "\n" not in row["reason"] and str(tmp_path) not in row["reason"] and "mod.py second line" in row["reason"]
    assert row["source_format"] == "dicom" and row["rows"] == 48  # facts learnt before the failure are kept
