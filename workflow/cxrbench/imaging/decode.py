"""Read any radiograph (DICOM, 8/16-bit PNG, JPG) into a 2-D array plus the facts needed to display it.

Decoding is delegated to pydicom 3's pixel API (with the pylibjpeg / OpenJPEG plugins) and Pillow. The
policy layer written here: which file is what (magic bytes, not extensions), quarantine reasons for
unusable files, grey conversion of colour files, the stored intensity range that MONOCHROME1 is inverted
on, and reduced-resolution decoding of JPEG 2000 (wavelet levels) and JPEG (DCT scaling) when the output
is much smaller than the source.

No patient-identifying DICOM field leaves this module: :class:`DecodedImage` carries pixel facts only.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000, UID, ImplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit

_logger = logging.getLogger(__name__)

__all__ = ["DecodedImage", "SourceInfo", "UnusableImage", "decode", "reduction_factor"]

# Radiographs are large; a 10k x 10k 16-bit image is legitimate, so lift Pillow's bomb guard to 400 MP.
Image.MAX_IMAGE_PIXELS = 400_000_000

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
# VOI attributes copied to the (identity-free) dataset that pydicom's apply_voi_lut reads.
_VOI_KEYWORDS = (
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
    "BitsStored",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "PhotometricInterpretation",
)


class UnusableImage(Exception):
    """A source image that cannot become a training PNG; ``code`` is a stable machine-readable reason."""

    def __init__(self, code: str, detail: str, info: SourceInfo | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.info = info or SourceInfo()

    @property
    def reason(self) -> str:
        return f"{self.code}: {self.detail}"


@dataclass
class SourceInfo:
    """What the source file is; one manifest row's worth of facts (nothing identifying)."""

    source_format: str | None = None  # dicom | png8 | png16 | jpg8
    transfer_syntax: str | None = None
    photometric: str | None = None
    bits_stored: int | None = None
    rows: int | None = None
    cols: int | None = None


@dataclass
class DecodedImage:
    """Stored pixel values (no rescale, no inversion applied) and how to turn them into display values."""

    pixels: np.ndarray  # 2-D, uint8 / uint16 / int16 / float32
    info: SourceInfo
    invert: bool = False  # MONOCHROME1 (or INVERSE presentation): minimum stored value is white
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    voi: Dataset | None = None  # VOI window / LUT attributes when the file carries them
    reduction: int = 1  # the source was decoded at 1/reduction of its resolution
    extra: dict = field(default_factory=dict)

    @property
    def has_voi(self) -> bool:
        return self.voi is not None and ("VOILUTSequence" in self.voi or "WindowCenter" in self.voi)


def reduction_factor(rows: int, cols: int, out_shape: tuple[int, int] | None, *, max_level: int = 5) -> int:
    """Largest power of two ``f`` with the source still at least the output size on both axes after ``/ f``.

    The reduced image is itself low-pass filtered (JPEG 2000's wavelet LL band, JPEG's scaled IDCT), and
    the final spline / anti-aliased resize still decides the output pixels from >= 1x their resolution.
    """
    if out_shape is None:
        return 1
    oh, ow = out_shape
    ratio = min(rows / oh, cols / ow)
    if ratio < 2:
        return 1
    return 2 ** min(max_level, math.floor(math.log2(ratio)))


def _sniff(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(132)
    if not head:
        raise UnusableImage("zero_size", "file is empty (0 bytes)")
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    return "dicom"  # with or without preamble (ACR-NEMA files have none); dcmread decides


def decode(path: str | Path, *, out_shape: tuple[int, int] | None = None, reduced: bool = False) -> DecodedImage:
    """Decode one source image.

    Args:
        path: the source file.
        out_shape: (rows, cols) the image will be resized to; with ``reduced`` it allows decoding at a
            lower resolution (JPEG 2000 wavelet level, JPEG DCT scaling).
        reduced: allow reduced-resolution decoding.

    Raises:
        UnusableImage: with a reason code (``missing_file``, ``zero_size``, ``truncated``,
            ``no_pixel_data``, ``unsupported_transfer_syntax``, ``non_image_sop_class``, ...).
    """
    path = Path(path)
    if not path.is_file():
        raise UnusableImage("missing_file", f"{path} does not exist or is not a file")
    kind = _sniff(path)
    if kind in ("png", "jpeg"):
        return _decode_pil(path, kind, out_shape if reduced else None)
    return _decode_dicom(path, out_shape if reduced else None)


# --- PNG / JPEG -------------------------------------------------------------------------------------


def _decode_pil(path: Path, kind: str, out_shape: tuple[int, int] | None) -> DecodedImage:
    fmt = "jpg8" if kind == "jpeg" else "png8"
    info = SourceInfo(source_format=fmt)
    try:
        im = Image.open(path)
        info.cols, info.rows = im.size
        info.photometric = "MONOCHROME2" if im.mode in ("L", "I;16", "I;16B", "I", "1") else im.mode
        if info.rows == 0 or info.cols == 0:
            raise UnusableImage("zero_size", "image has zero rows or columns", info)
        reduction = 1
        if kind == "jpeg" and out_shape is not None:
            f = reduction_factor(info.rows, info.cols, out_shape, max_level=3)  # DCT scaling: 1/2, 1/4, 1/8
            if f > 1:
                # draft() picks the smallest DCT scale whose size is >= the request, and decodes straight to L.
                im.draft("L", (math.ceil(info.cols / f), math.ceil(info.rows / f)))
                reduction = round(info.cols / im.size[0])
        im.load()
    except UnusableImage:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        code = "truncated" if "truncated" in str(exc).lower() else "decode_error"
        raise UnusableImage(code, f"{kind.upper()} decode failed: {exc}", info) from exc
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L"):
        arr = np.asarray(im, dtype=np.uint16)
        info.source_format, info.bits_stored = "png16", 16
    elif mode == "I":
        arr = np.asarray(im)
        if arr.min() < 0 or arr.max() > 65535:
            raise UnusableImage("unsupported_pixel_format", "32-bit integer PNG with values outside 0..65535", info)
        arr = arr.astype(np.uint16)
        info.source_format, info.bits_stored = "png16", 16
    elif mode == "L":
        arr = np.asarray(im)
        info.bits_stored = 8
    elif mode in ("RGB", "RGBA", "LA", "P", "PA", "CMYK", "YCbCr", "1"):
        # Some "grey" files are RGB/RGBA (derived CheXpert mirrors, TBX11K, a few NIH PNGs): ITU-R 601 luma.
        arr = np.asarray(im.convert("L"))
        info.bits_stored = 8
    else:
        raise UnusableImage("unsupported_pixel_format", f"Pillow mode {mode!r} is not a radiograph format", info)
    return DecodedImage(pixels=np.ascontiguousarray(arr), info=info, reduction=reduction)


# --- DICOM ------------------------------------------------------------------------------------------


def _is_image_sop_class(uid: str) -> bool:
    name = UID(uid).name
    # Unknown private classes have name == uid: give them the benefit of the doubt (pixel checks follow).
    return name == uid or "Image Storage" in name


def _j2k_header(codestream: bytes) -> tuple[int, int]:
    """(wavelet decomposition levels, component precision) from a JPEG 2000 main header; 0 when absent."""
    levels = precision = 0
    i = 2 if codestream[:2] == b"\xff\x4f" else codestream.find(b"\xff\x4f") + 2
    while 0 < i < len(codestream) - 41:
        marker = codestream[i : i + 2]
        length = int.from_bytes(codestream[i + 2 : i + 4], "big")
        if marker == b"\xff\x51":  # SIZ: Lsiz Rsiz 8x4-byte sizes Csiz | Ssiz (precision - 1, sign bit)
            precision = (codestream[i + 40] & 0x7F) + 1
        elif marker == b"\xff\x52":  # COD: Lcod Scod | progression layers(2) MCT | levels ...
            levels = codestream[i + 9]
        elif marker == b"\xff\x90":  # first tile-part: the main header is over
            break
        i += 2 + length
    return levels, precision


def _decode_dicom(path: Path, out_shape: tuple[int, int] | None) -> DecodedImage:
    info = SourceInfo(source_format="dicom")
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as exc:  # pydicom raises many types on garbage input
        code = "truncated" if isinstance(exc, EOFError) else "unreadable"
        raise UnusableImage(code, f"not a readable DICOM file: {type(exc).__name__}: {exc}", info) from exc
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts is None:
        # ACR-NEMA style file without meta header: pydicom read it with the encoding it detected.
        if len(ds) == 0 or ("Rows" not in ds and "PixelData" not in ds):
            raise UnusableImage("not_an_image", "unrecognised file format (not PNG, JPEG or DICOM)", info)
        ds.file_meta = ds.file_meta if meta is not None else pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if ds.is_implicit_VR else UID("1.2.840.10008.1.2.1")
        ts = ds.file_meta.TransferSyntaxUID
    info.transfer_syntax = str(ts)
    info.photometric = str(ds.get("PhotometricInterpretation", "")) or None
    info.bits_stored = int(ds.BitsStored) if "BitsStored" in ds else None
    info.rows = int(ds.Rows) if "Rows" in ds else None
    info.cols = int(ds.Columns) if "Columns" in ds else None

    sop = ds.get("SOPClassUID")
    if sop is not None and not _is_image_sop_class(str(sop)):
        raise UnusableImage("non_image_sop_class", f"SOP class {UID(str(sop)).name} holds no radiograph", info)
    if "PixelData" not in ds:
        raise UnusableImage("no_pixel_data", "the dataset has no (7FE0,0010) Pixel Data element", info)
    if not info.rows or not info.cols:
        raise UnusableImage("zero_size", f"Rows={info.rows} Columns={info.cols}", info)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise UnusableImage("multi_frame", f"{frames} frames; a radiograph has one", info)
    if info.photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422"):
        raise UnusableImage("unsupported_photometric", f"photometric interpretation {info.photometric!r}", info)
    uid = UID(str(ts))
    try:
        decoder = pydicom.pixels.get_decoder(uid)
    except NotImplementedError:
        raise UnusableImage("unsupported_transfer_syntax", f"no pixel decoder for {uid.name} ({uid})", info) from None
    if not decoder.is_available:
        raise UnusableImage("unsupported_transfer_syntax", f"no installed plugin decodes {uid.name} ({uid})", info)
    if not uid.is_compressed:
        expected = info.rows * info.cols * int(ds.get("SamplesPerPixel", 1)) * int(ds.get("BitsAllocated", 16)) // 8
        if len(ds.PixelData) < expected:
            raise UnusableImage("truncated", f"pixel data has {len(ds.PixelData)} bytes, {expected} expected", info)

    arr, reduction = None, 1
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    if out_shape is not None and uid in (JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit) and not signed:
        arr, reduction = _decode_reduced(ds, uid, info, out_shape)
    if arr is None:
        try:
            arr = ds.pixel_array
        except Exception as exc:  # plugins raise RuntimeError/ValueError/OSError on corrupt streams
            text = str(exc)
            code = "truncated" if ("length" in text.lower() or "truncat" in text.lower()) else "decode_error"
            raise UnusableImage(code, f"pixel decode failed ({uid.name}): {type(exc).__name__}: {text}", info) from exc
    if arr.ndim == 3:  # colour after pydicom's YBR -> RGB conversion
        arr = np.asarray(Image.fromarray(np.ascontiguousarray(arr.astype(np.uint8))).convert("L"))
    if arr.ndim != 2:
        raise UnusableImage("unsupported_pixel_format", f"pixel array has shape {arr.shape}", info)

    voi = Dataset()
    for kw in _VOI_KEYWORDS:
        if kw in ds:
            setattr(voi, kw, ds[kw].value)
    invert = info.photometric == "MONOCHROME1" or str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE"
    return DecodedImage(
        pixels=np.ascontiguousarray(arr),
        info=info,
        invert=invert,
        rescale_slope=float(ds.get("RescaleSlope", 1.0) or 1.0),
        rescale_intercept=float(ds.get("RescaleIntercept", 0.0) or 0.0),
        voi=voi,
        reduction=reduction,
    )


def _decode_reduced(ds: Dataset, uid: UID, info: SourceInfo, out_shape: tuple[int, int]) -> tuple[np.ndarray | None, int]:
    """Decode the single frame at 1/2^r resolution with Pillow; (None, 1) when not worthwhile or possible."""
    from pydicom.encaps import generate_frames

    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    except Exception as exc:
        raise UnusableImage("truncated", f"encapsulated pixel data is unreadable: {exc}", info) from exc
    if uid == JPEGBaseline8Bit:
        f = reduction_factor(info.rows, info.cols, out_shape, max_level=3)
        if f == 1:
            return None, 1
        try:
            im = Image.open(io.BytesIO(frame))
            im.draft("L", (math.ceil(info.cols / f), math.ceil(info.rows / f)))
            im = im.convert("L") if im.mode != "L" else im
            im.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise UnusableImage("decode_error", f"JPEG baseline frame: {exc}", info) from exc
        return np.asarray(im), round(info.cols / im.size[0])
    levels, precision = _j2k_header(frame)
    f = reduction_factor(info.rows, info.cols, out_shape, max_level=levels)
    # Pillow sizes a reduced image as round-half-down(n / f) while OpenJPEG produces ceil(n / f); where they
    # differ Pillow reports a broken stream, so step down to the largest level where they agree.
    while f > 1 and any(int((n + f // 2) / f) != -(-n // f) for n in (info.rows, info.cols)):
        f //= 2
    if f == 1:
        return None, 1
    try:
        im = Image.open(io.BytesIO(frame))
        im.reduce = int(math.log2(f))  # Pillow's JPEG 2000 plugin decodes only the needed wavelet levels
        im.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise UnusableImage("decode_error", f"JPEG 2000 frame: {exc}", info) from exc
    arr = np.asarray(im)
    if im.mode.startswith("I;16") and 8 < precision < 16:
        # Pillow scales precision-p samples up to 16 bits; shift back to the stored range.
        arr = arr >> (16 - precision)
    elif im.mode not in ("L", "I;16"):
        return None, 1
    return arr, f
