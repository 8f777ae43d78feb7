"""Decoding real radiographs and every transfer syntax the issue names; both intensity modes on a real CR."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from cxrbench.imaging.decode import decode
from cxrbench.imaging.pipeline import Recipe, convert
from PIL import Image
from pydicom.data import get_testdata_file

SAMPLES = Path(__file__).parent / "data" / "chestxray14"  # real NIH images in the repository (tests/data/README.md)
NIH_PNGS = sorted(SAMPLES.glob("*.png"))


def _rg1(name: str) -> str:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom-data {name} not installed")
    return path


def _regions(img: np.ndarray) -> dict[str, float]:
    """Mean grey of the two lung fields and the mediastinum/spine column of a PA chest at any size."""
    s = img.shape[0] / 224
    r = lambda a, b: slice(int(a * s), int(b * s))
    return {
        "lung_left": float(img[r(70, 130), r(40, 90)].mean()),
        "lung_right": float(img[r(70, 130), r(134, 184)].mean()),
        "spine": float(img[r(60, 140), r(102, 122)].mean()),
    }


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG1_J2KR.dcm"])
@pytest.mark.parametrize("mode", ["paper", "standard"])
def test_real_cr_monochrome1_lungs_dark_bone_bright(name: str, mode: str) -> None:
    img, info, extra = convert(_rg1(name), Recipe(mode=mode, size=224, reduced_decode=True))
    assert img.shape == (224, 224) and img.dtype == np.uint8
    assert info.photometric == "MONOCHROME1" and info.bits_stored == 15 and (info.rows, info.cols) == (1955, 1841)
    reg = _regions(img)
    # Without inversion the lungs would be the brightest region; the margin is large in both modes.
    assert reg["spine"] > reg["lung_left"] + 40 and reg["spine"] > reg["lung_right"] + 40
    assert extra["window"] == ("minmax" if mode == "paper" else "voi")


def test_j2k_lossless_equals_uncompressed_and_reduced_decode_is_close() -> None:
    full = convert(_rg1("RG1_J2KR.dcm"), Recipe("paper", 224, reduced_decode=False))[0]
    unc = convert(_rg1("RG1_UNCR.dcm"), Recipe("paper", 224, reduced_decode=False))[0]
    assert np.array_equal(full, unc)
    reduced, _, extra = convert(_rg1("RG1_J2KR.dcm"), Recipe("paper", 224, reduced_decode=True))
    assert extra["reduction"] >= 2
    diff = np.abs(reduced.astype(int) - full.astype(int))
    assert np.median(diff) <= 4 and diff.mean() < 8


def test_pillow_reduced_j2k_keeps_stored_values() -> None:
    red = decode(_rg1("RG1_J2KR.dcm"), out_shape=(224, 224), reduced=True)
    full = pydicom.dcmread(_rg1("RG1_J2KR.dcm")).pixel_array
    f = red.reduction
    assert red.pixels.dtype == np.uint16 and red.pixels.shape == (-(-1955 // f), -(-1841 // f))
    # Stored 15-bit range, not Pillow's 16-bit scaling: the low-pass mean matches the full image's.
    assert red.pixels.max() <= 2**15 - 1
    assert abs(float(red.pixels.mean()) - float(full.mean())) / float(full.mean()) < 0.01


@pytest.mark.parametrize(
    "name",
    [
        "JPEG-LL.dcm",  # JPEG Lossless SV1
        "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
        "JPEGLSNearLossless_16.dcm",  # JPEG-LS near-lossless
        "MR_small_RLE.dcm",  # RLE
        "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YBR colour -> grey
        "JPEG2000.dcm",  # JPEG 2000 lossy
    ],
)
def test_compressed_transfer_syntaxes_decode(name: str, tmp_path: Path) -> None:
    path = get_testdata_file(name, download=False)
    ds = pydicom.dcmread(path)
    img, info, _ = convert(path, Recipe("standard", 32))
    assert img.shape == (32, 32) and img.std() > 5
    assert info.transfer_syntax == str(ds.file_meta.TransferSyntaxUID)
    dec = decode(path)
    ref = ds.pixel_array
    if ref.ndim == 2:
        assert np.array_equal(dec.pixels, ref)


def test_jpeg_baseline_dicom_reduced_by_dct_scaling(tmp_path: Path) -> None:
    from pydicom.uid import JPEGBaseline8Bit

    rng = np.random.default_rng(0)
    arr = (np.add.outer(np.arange(512), np.arange(512)) // 4 % 256).astype(np.uint8)
    arr = np.clip(arr.astype(int) + rng.integers(0, 5, arr.shape), 0, 255).astype(np.uint8)
    ds = _native_dicom(arr, "MONOCHROME2", 8)
    buf = _jpeg_bytes(arr)  # Pillow encodes; pydicom has no JPEG baseline encoder
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([buf])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    path = tmp_path / "jpeg.dcm"
    ds.save_as(path, enforce_file_format=True)
    red = decode(path, out_shape=(64, 64), reduced=True)
    assert red.reduction == 8 and red.pixels.shape == (64, 64)
    assert red.pixels.dtype == np.uint8


@pytest.mark.parametrize("png", NIH_PNGS, ids=lambda p: p.name)
def test_real_nih_png(png: Path) -> None:
    for mode in ("paper", "standard"):
        img, info, _ = convert(png, Recipe(mode, 64))
        assert img.shape == (64, 64)
        assert info.source_format == "png8" and (info.rows, info.cols) == (1024, 1024)
        reg = _regions(img)
        assert reg["spine"] > min(reg["lung_left"], reg["lung_right"])


def test_16bit_png_read_at_full_depth(tmp_path: Path) -> None:
    # 12-bit content in a 16-bit PNG whose values differ only below the top byte: 8-bit truncation loses it.
    arr = (np.arange(64 * 64).reshape(64, 64) % 4096 // 16 + 1000).astype(np.uint16)
    path = tmp_path / "p16.png"
    Image.fromarray(arr).save(path)
    dec = decode(path)
    assert dec.info.source_format == "png16" and dec.pixels.dtype == np.uint16
    assert np.array_equal(dec.pixels, arr)
    img = convert(path, Recipe("paper", 64, equalize=False))[0]
    assert len(np.unique(img)) > 200  # full depth survives min-max; 8-bit truncation would leave ~1 level


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_colour_png_and_jpg_to_grey(tmp_path: Path, mode: str) -> None:
    grey = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
    rgb = Image.fromarray(grey).convert(mode)
    rgb.save(tmp_path / "c.png")
    dec = decode(tmp_path / "c.png")
    assert dec.pixels.ndim == 2 and np.array_equal(dec.pixels, grey)
    Image.fromarray(grey).convert("RGB").save(tmp_path / "c.jpg", quality=95)
    dec = decode(tmp_path / "c.jpg")
    assert dec.info.source_format == "jpg8" and dec.pixels.ndim == 2
    assert np.abs(dec.pixels.astype(int) - grey).max() <= 4


def test_jpg_draft_reduction(tmp_path: Path) -> None:
    grey = np.tile(np.arange(1024, dtype=np.uint16) % 256, (1024, 1)).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "big.jpg", quality=90)
    dec = decode(tmp_path / "big.jpg", out_shape=(64, 64), reduced=True)
    assert dec.reduction == 8 and dec.pixels.shape == (128, 128)  # DCT scaling stops at 1/8
    assert decode(tmp_path / "big.jpg").pixels.shape == (1024, 1024)


def _native_dicom(arr: np.ndarray, photometric: str, bits: int, **extra) -> pydicom.Dataset:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR Image Storage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Doe^Jane"
    ds.set_pixel_data(arr, photometric_interpretation=photometric, bits_stored=bits)
    for k, v in extra.items():
        setattr(ds, k, v)
    return ds


def _jpeg_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _phantom(bits: int = 12) -> np.ndarray:
    """Smooth bright 'bone' blob on a dark 'lung' background in MONOCHROME2 terms (no edges to ring)."""
    yy, xx = np.mgrid[:64, :64]
    blob = np.exp(-((yy - 32) ** 2 + (xx - 32) ** 2) / (2 * 8.0**2))
    return (300 + blob * (2**bits - 600)).astype(np.uint16)


def test_monochrome1_inverted_on_stored_range_and_rescale(tmp_path: Path) -> None:
    mono2 = _phantom()
    mono1 = (2**12 - 1 - mono2).astype(np.uint16)  # same anatomy stored as MONOCHROME1
    _native_dicom(mono1, "MONOCHROME1", 12).save_as(tmp_path / "m1.dcm", enforce_file_format=True)
    _native_dicom(mono2, "MONOCHROME2", 12, RescaleSlope=2.0, RescaleIntercept=-100.0).save_as(
        tmp_path / "m2.dcm", enforce_file_format=True
    )
    for mode in ("paper", "standard"):
        a = convert(tmp_path / "m1.dcm", Recipe(mode, 32, equalize=False))[0]
        b = convert(tmp_path / "m2.dcm", Recipe(mode, 32, equalize=False))[0]
        assert a[16, 16] > a[2, 2] + 100, mode  # bone bright after inversion
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1, mode


def test_voi_window_applied_then_monochrome1_inverted(tmp_path: Path) -> None:
    mono1 = (2**12 - 1 - _phantom()).astype(np.uint16)
    ds = _native_dicom(mono1, "MONOCHROME1", 12, WindowCenter=2000, WindowWidth=4000)
    ds.save_as(tmp_path / "w.dcm", enforce_file_format=True)
    img, _, extra = convert(tmp_path / "w.dcm", Recipe("standard", 64))
    assert extra["window"] == "voi"
    assert img[32, 32] > 200 and img[5, 5] < 40


def test_acr_nema_file_without_preamble_or_meta(tmp_path: Path) -> None:
    from pydicom.filebase import DicomFileLike
    from pydicom.filewriter import write_dataset

    ds = _native_dicom(_phantom(), "MONOCHROME2", 12)
    del ds.file_meta
    with open(tmp_path / "acr", "wb") as fh:
        out = DicomFileLike(fh)
        out.is_little_endian, out.is_implicit_VR = True, True
        write_dataset(out, ds)
    assert (tmp_path / "acr").read_bytes()[128:132] != b"DICM"
    dec = decode(tmp_path / "acr")
    assert dec.info.transfer_syntax == "1.2.840.10008.1.2" and np.array_equal(dec.pixels, _phantom())
    assert dec.info.source_format == "dicom"  # the archive scans the headers of exactly these sources


@pytest.mark.parametrize(("rows", "cols", "size", "f"), [(978, 921, 224, 4), (978, 921, 448, 2), (1001, 999, 124, 8)])
def test_jpg_draft_uses_the_documented_reduction_for_odd_sizes(
    tmp_path: Path, rows: int, cols: int, size: int, f: int
) -> None:
    # Largest f = 2^r with min(rows, cols) / f >= size; Pillow's draft() must not stop one level short.
    grey = (np.add.outer(np.arange(rows), np.arange(cols)) % 256).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "odd.jpg", quality=90)
    dec = decode(tmp_path / "odd.jpg", out_shape=(size, size), reduced=True)
    assert dec.reduction == f and dec.pixels.shape == (-(-rows // f), -(-cols // f))
    assert min(dec.pixels.shape) >= size
