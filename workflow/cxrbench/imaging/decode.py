"""Read any radiograph (DICOM, 8/16-bit PNG, JPG) into a 2-D array plus the facts needed to display it.

Decoding is delegated to pydicom 3's pixel API (with the pylibjpeg / OpenJPEG plugins) and Pillow. The
policy layer written here: which file is what (magic bytes and content, not extensions), quarantine
reasons for unusable files, native byte order and grey conversion of colour files (once, here, before either
rendering mode), and reduced-resolution decoding of JPEG 2000 (wavelet levels) and JPEG (DCT scaling) when
the output is much smaller than the source.

No patient-identifying DICOM field leaves this module: :class:`DecodedImage` carries pixel facts only.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.datadict import dictionary_has_tag
from pydicom.dataset import Dataset
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import (
    JPEG2000,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
)

_logger = logging.getLogger(__name__)

__all__ = ["REASON_CODES", "DecodedImage", "SourceInfo", "UnusableImage", "decode", "reduction_factor"]

# Radiographs are large; a 10k x 10k 16-bit image is legitimate, so lift Pillow's bomb guard to 400 MP.
Image.MAX_IMAGE_PIXELS = 400_000_000

# Every quarantine reason code, with what it means (docs/preprocessing.md renders this table; an
# UnusableImage with any other code is a programming error).
REASON_CODES: dict[str, str] = {
    "missing_file": "the source path does not exist or is not a regular file",
    "zero_size": "empty file, or Rows/Columns (image width/height) of 0",
    "not_an_image": "neither PNG, JPEG nor DICOM (no DICM marker and no parseable DICOM elements)",
    "unreadable": "has the DICM marker but its header cannot be parsed",
    "truncated": "the file ends before its (pixel) data does",
    "no_pixel_data": "a DICOM dataset without a (7FE0,0010) Pixel Data element",
    "non_image_sop_class": "a DICOM object whose SOP class holds no image (report, plan, structure set, ...)",
    "missing_attribute": "a DICOM image attribute needed to decode (Rows, Columns) is absent",
    "invalid_attribute": "a DICOM image attribute has a value that cannot be parsed",
    "multi_frame": "more than one frame (a radiograph has exactly one)",
    "palette_color": "PALETTE COLOR photometric interpretation (no radiograph is stored that way)",
    "unsupported_photometric": "a photometric interpretation other than MONOCHROME1/2, RGB or YBR_*",
    "unsupported_transfer_syntax": "no installed pixel decoder handles the transfer syntax",
    "pixel_length_mismatch": "complete pixel data whose length disagrees with Rows x Columns x samples x bits",
    "unsupported_pixel_format": "a decoded pixel layout that is not a 2-D grey or RGB image",
    "decode_error": "the compressed pixel stream is corrupt (every decoder failed)",
    "constant_image": "every pixel has the same value: no contrast to normalise",
    "internal_error": "an unexpected exception in cxrbench itself (a bug: please report it)",
}

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
        if code not in REASON_CODES:
            raise ValueError(f"undocumented quarantine reason code {code!r}")
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.info = info or SourceInfo()

    @property
    def reason(self) -> str:
        """``<code>: <detail>``, the manifest's ``reason`` value."""
        return f"{self.code}: {self.detail}"


@dataclass
class SourceInfo:
    """What the source file is; one manifest row's worth of facts (nothing identifying)."""

    # dicom (identified and parsed as DICOM, with or without meta header) | png8 | png16 | jpg8 | unknown
    source_format: str | None = None
    transfer_syntax: str | None = None
    photometric: str | None = None
    bits_stored: int | None = None
    rows: int | None = None
    cols: int | None = None


@dataclass
class DecodedImage:
    """Stored pixel values (no rescale, no inversion applied) and how to turn them into display values."""

    pixels: np.ndarray  # 2-D, native byte order, uint8 / uint16 / int16 / float32; colour already grey
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


def _sniff(path: Path, info: SourceInfo) -> str:
    """``png``, ``jpeg``, ``dicom`` (DICM marker at byte 128) or ``other`` (maybe header-less ACR-NEMA)."""
    with open(path, "rb") as fh:
        head = fh.read(132)
    if not head:
        info.source_format = "unknown"
        raise UnusableImage("zero_size", "file is empty (0 bytes)", info)
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    return "dicom" if head[128:132] == b"DICM" else "other"


def decode(
    path: str | Path, *, out_shape: tuple[int, int] | None = None, reduced: bool = False, info: SourceInfo | None = None
) -> DecodedImage:
    """Decode one source image.

    Args:
        path: the source file.
        out_shape: (rows, cols) the image will be resized to; with ``reduced`` it allows decoding at a
            lower resolution (JPEG 2000 wavelet level, JPEG DCT scaling).
        reduced: allow reduced-resolution decoding.
        info: filled in place as facts are learnt, so a caller still has them when decoding fails.

    Raises:
        UnusableImage: with one of :data:`REASON_CODES`.
    """
    path = Path(path)
    info = info if info is not None else SourceInfo()
    if not path.is_file():
        raise UnusableImage("missing_file", "the source file does not exist or is not a regular file", info)
    kind = _sniff(path, info)
    if kind in ("png", "jpeg"):
        return _decode_pil(path, kind, out_shape if reduced else None, info)
    return _decode_dicom(path, kind == "dicom", out_shape if reduced else None, info)


# --- PNG / JPEG -------------------------------------------------------------------------------------


def _jpeg_draft(im: Image.Image, rows: int, cols: int, out_shape: tuple[int, int]) -> int:
    """Make Pillow decode a JPEG at 1/f (DCT scaling, f in 1, 2, 4, 8, straight to L) and return f.

    f is :func:`reduction_factor`'s. ``draft`` picks the largest scale ``s <= min(n // requested_n)``, so the
    request is ``n // f`` per axis (``ceil(n / f)`` would give ``s < f`` for odd sizes, e.g. 921 x 978).
    """
    f = reduction_factor(rows, cols, out_shape, max_level=3)
    if f > 1:
        im.draft("L", (cols // f, rows // f))
    # Report what Pillow actually chose: the decoded size is ceil(n / s).
    for s in (8, 4, 2):
        if im.size == (-(-cols // s), -(-rows // s)):
            return s
    return 1


def _decode_pil(path: Path, kind: str, out_shape: tuple[int, int] | None, info: SourceInfo) -> DecodedImage:
    info.source_format = "jpg8" if kind == "jpeg" else "png8"
    try:
        im = Image.open(path)
        info.cols, info.rows = im.size
        info.photometric = "MONOCHROME2" if im.mode in ("L", "I;16", "I;16B", "I", "1") else im.mode
        if info.rows == 0 or info.cols == 0:
            raise UnusableImage("zero_size", "image has zero rows or columns", info)
        reduction = 1
        if kind == "jpeg" and out_shape is not None:
            reduction = _jpeg_draft(im, info.rows, info.cols, out_shape)
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

# Photometric interpretations decoded to grey. pydicom returns RGB for YBR_FULL(_422) (its colour-space
# conversion) and the JPEG 2000 decoders undo the YBR_RCT / YBR_ICT component transform themselves.
_GREY = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT")


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


def _has_elements(ds: Dataset, *, header_less: bool) -> bool:
    """Whether pydicom parsed real data elements rather than noise.

    Arbitrary bytes (text, archives, noise) parse as one element with an unknown tag before pydicom stops.
    A header-less (ACR-NEMA style) file counts as DICOM only with a public element of group >= 0008 (half of
    all noise tags are odd, i.e. "private"); behind a DICM marker private elements count too.
    """
    if header_less:
        return any(tag.group >= 0x0008 and dictionary_has_tag(tag) for tag in ds.keys())  # noqa: SIM118 - iterating a Dataset yields elements
    return any(tag.is_private or dictionary_has_tag(tag) for tag in ds.keys())  # noqa: SIM118


def _read_dicom(path: Path, marker: bool, info: SourceInfo) -> tuple[Dataset, bool]:
    """Parse the file; set ``source_format`` to ``dicom`` only when it is DICOM (marker or parsed elements).

    Returns the dataset and whether pydicom reached the end of the file inside an element (a cut file).
    """
    if marker:
        info.source_format = "dicom"
    # pydicom reports a file cut inside a sequence or encapsulated data only as a warning (and returns what it
    # read): record them, so a cut file is called truncated, and keep them (they hold the absolute path) out
    # of the warnings stream; -v shows them.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(path, force=True)
        except Exception as exc:  # pydicom raises many types on garbage input
            if not marker:
                info.source_format = "unknown"
                raise UnusableImage("not_an_image", "unrecognised file format (not PNG, JPEG or DICOM)", info) from exc
            code = "truncated" if isinstance(exc, EOFError) else "unreadable"
            raise UnusableImage(code, f"DICOM header cannot be parsed: {type(exc).__name__}: {exc}", info) from exc
    for w in caught:
        _logger.debug("%s: %s", path, w.message)
    cut = any("end of file" in str(w.message).lower() for w in caught)
    if _has_elements(ds, header_less=not marker):
        info.source_format = "dicom"
        if cut and "PixelData" not in ds:
            raise UnusableImage("truncated", "the file ends before its pixel data", info)
        return ds, cut
    if not marker:
        info.source_format = "unknown"
        raise UnusableImage("not_an_image", "unrecognised file format (not PNG, JPEG or DICOM)", info)
    if cut:
        raise UnusableImage("truncated", "the file ends inside its first data elements", info)
    raise UnusableImage("unreadable", "DICM marker present but no DICOM data element could be parsed", info)


def _image_attributes(ds: Dataset, info: SourceInfo) -> UID:
    """Fill ``info`` from the header and return the transfer syntax (implied for header-less files)."""
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts is None:
        # ACR-NEMA style file (or meta without a transfer syntax): pydicom read it with the encoding it detected.
        if meta is None:
            ds.file_meta = pydicom.dataset.FileMetaDataset()
        implicit, little = ds.original_encoding
        if not little:
            ts = ExplicitVRBigEndian  # there is no implicit VR big endian transfer syntax
        else:
            ts = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        ds.file_meta.TransferSyntaxUID = ts
    info.transfer_syntax = str(ts)
    info.photometric = str(ds.get("PhotometricInterpretation", "")).strip() or None
    # Descriptive here (a non-image object may carry odd values); _decode_dicom re-reads them strictly.
    for field_name, keyword in (("bits_stored", "BitsStored"), ("rows", "Rows"), ("cols", "Columns")):
        with contextlib.suppress(UnusableImage):
            setattr(info, field_name, _int_attribute(ds, keyword, info))
    return UID(str(ts))


def _int_attribute(ds: Dataset, keyword: str, info: SourceInfo, default: int | None = None) -> int | None:
    """An integer attribute, ``default`` when absent or empty; a value that is no integer is ``invalid_attribute``."""
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise UnusableImage("invalid_attribute", f"{keyword} = {str(value)[:40]!r} is not an integer", info) from exc


def _check_native_length(ds: Dataset, info: SourceInfo) -> None:
    """Uncompressed pixel data: a file cut short is ``truncated``; complete data of the wrong size is a mismatch."""
    elem = ds.get_item("PixelData")
    declared, present = getattr(elem, "length", None), len(ds.PixelData)
    if declared is not None and 0 <= present < declared != 0xFFFFFFFF:
        raise UnusableImage("truncated", f"the file ends inside the pixel data: {present} of {declared} bytes", info)
    try:
        expected = get_expected_length(ds, "bytes")  # accounts for chroma subsampling (YBR_FULL_422), 1-bit data
    except AttributeError as exc:  # e.g. no BitsAllocated / SamplesPerPixel
        raise UnusableImage("missing_attribute", f"cannot size the pixel data: {exc}", info) from exc
    if present < expected or present >= 2 * expected:
        # pydicom trims a little excess as padding; a whole frame more means Rows/Columns/frames are wrong.
        raise UnusableImage(
            "pixel_length_mismatch",
            f"pixel data has {present} bytes, Rows {info.rows} x Columns {info.cols} need {expected}",
            info,
        )


def _to_grey(arr: np.ndarray, info: SourceInfo) -> np.ndarray:
    """Native byte order, and colour (RGB after pydicom's / the codec's conversion) to ITU-R 601 luma."""
    if not arr.dtype.isnative:  # big-endian transfer syntaxes: numba kernels and Pillow need native order
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.ndim == 3 and arr.shape[-1] == 3:
        if arr.dtype == np.uint8:
            return np.asarray(Image.fromarray(np.ascontiguousarray(arr), mode="RGB").convert("L"))
        # Pillow has no 16-bit RGB mode: the same luma weights, kept at the stored depth.
        luma = np.rint(arr.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))
        return luma.astype(arr.dtype)
    if arr.ndim != 2:
        raise UnusableImage("unsupported_pixel_format", f"pixel array has shape {arr.shape}", info)
    return arr


def _decode_dicom(path: Path, marker: bool, out_shape: tuple[int, int] | None, info: SourceInfo) -> DecodedImage:
    ds, cut = _read_dicom(path, marker, info)
    uid = _image_attributes(ds, info)
    sop = ds.get("SOPClassUID")
    if sop is not None and not _is_image_sop_class(str(sop)):
        raise UnusableImage("non_image_sop_class", f"SOP class {UID(str(sop)).name} holds no radiograph", info)
    if "PixelData" not in ds:
        raise UnusableImage("no_pixel_data", "the dataset has no (7FE0,0010) Pixel Data element", info)
    for keyword in ("Rows", "Columns", "BitsStored"):
        _int_attribute(ds, keyword, info)
    if info.rows is None or info.cols is None:
        raise UnusableImage("missing_attribute", f"Rows={info.rows} Columns={info.cols}: both are required", info)
    if not info.rows or not info.cols:
        raise UnusableImage("zero_size", f"Rows={info.rows} Columns={info.cols}", info)
    frames = _int_attribute(ds, "NumberOfFrames", info, default=1)
    if frames != 1:
        raise UnusableImage("multi_frame", f"{frames} frames; a radiograph has one", info)
    if info.photometric == "PALETTE COLOR":
        raise UnusableImage("palette_color", "PALETTE COLOR pixels index a colour lookup table", info)
    if info.photometric not in _GREY + _COLOUR:
        raise UnusableImage("unsupported_photometric", f"photometric interpretation {info.photometric!r}", info)
    try:
        decoder = pydicom.pixels.get_decoder(uid)
    except NotImplementedError:
        raise UnusableImage("unsupported_transfer_syntax", f"no pixel decoder for {uid.name} ({uid})", info) from None
    if not decoder.is_available:
        raise UnusableImage("unsupported_transfer_syntax", f"no installed plugin decodes {uid.name} ({uid})", info)
    if not uid.is_compressed:
        _check_native_length(ds, info)

    arr, reduction = None, 1
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    if out_shape is not None and uid in (JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit) and not signed:
        try:
            arr, reduction = _decode_reduced(ds, uid, info, out_shape)
        except UnusableImage as exc:
            raise UnusableImage("truncated" if cut else exc.code, exc.detail, info) from exc
    if arr is None:
        try:
            arr = ds.pixel_array
        except Exception as exc:  # plugins raise RuntimeError/ValueError/OSError on corrupt streams
            code = "truncated" if cut else "decode_error"
            raise UnusableImage(code, f"pixel decode failed ({uid.name}): {type(exc).__name__}: {exc}", info) from exc
    arr = _to_grey(arr, info)

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
        raise UnusableImage("decode_error", f"encapsulated pixel data is unreadable: {exc}", info) from exc
    if uid == JPEGBaseline8Bit:
        try:
            im = Image.open(io.BytesIO(frame))
            f = _jpeg_draft(im, info.rows, info.cols, out_shape)
            if f == 1:
                return None, 1
            im = im.convert("L") if im.mode != "L" else im
            im.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise UnusableImage("decode_error", f"JPEG baseline frame: {exc}", info) from exc
        return np.asarray(im), f
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
