"""Chest-radiograph phantoms whose findings are drawn, so demo labels are learnable.

A phantom is a float image in [0, 1] in display convention (air dark, bone and fluid bright), built
from a per-patient :class:`Anatomy` (body, lungs, mediastinum, heart, diaphragm, ribs) plus a list of
drawn findings. Every dataset writer uses the same drawing for the same finding, so a model trained on
one demo dataset transfers to another (the point of the study's pre-training arms).

Coordinates: ``x`` runs from -1 (image left = patient right on a PA view) to +1, ``y`` from -1 (top)
to +1 (bottom). Findings return a bounding box in pixel coordinates (used for VinDr-CXR box files).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

__all__ = ["FINDINGS", "Anatomy", "Finding", "render"]

_logger = logging.getLogger(__name__)

# The drawable findings. Dataset writers map their native labels onto these names.
FINDINGS: tuple[str, ...] = (
    "cardiomegaly",
    "pleural_effusion",
    "nodule",
    "mass",
    "consolidation",
    "opacity",  # patchy airspace opacity: lung opacity, infiltration, pneumonia
    "pneumothorax",
    "atelectasis",
    "edema",
    "emphysema",
    "fibrosis",  # coarse basal reticulation; also ILD
    "pleural_thickening",
    "hernia",
    "fracture",
    "support_devices",
    "enlarged_cardiomediastinum",
    "aortic_enlargement",
    "calcification",
)

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Finding:
    """One drawn finding: ``side`` is the patient's side (R/L/B), ``severity`` scales its size/density."""

    name: str
    side: str = "R"
    severity: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in FINDINGS:
            raise ValueError(f"unknown phantom finding {self.name!r}; known: {', '.join(FINDINGS)}")
        if self.side not in ("R", "L", "B"):
            raise ValueError(f"finding side must be R, L or B, got {self.side!r}")


@dataclass(frozen=True)
class Anatomy:
    """Per-patient shape parameters: all images of one patient share them (plus small jitter)."""

    body_w: float
    lung_w: float
    lung_h: float
    lung_gap: float
    heart_w: float
    heart_h: float
    dome: float
    rib_phase: float
    brightness: float
    shift_x: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Anatomy:
        """A plausible adult anatomy."""
        return cls(
            body_w=float(rng.uniform(0.82, 0.92)),
            lung_w=float(rng.uniform(0.25, 0.29)),
            lung_h=float(rng.uniform(0.52, 0.6)),
            lung_gap=float(rng.uniform(0.38, 0.44)),
            heart_w=float(rng.uniform(0.21, 0.25)),
            heart_h=float(rng.uniform(0.19, 0.23)),
            dome=float(rng.uniform(0.48, 0.56)),
            rib_phase=float(rng.uniform(0.0, 0.12)),
            brightness=float(rng.uniform(0.9, 1.1)),
            shift_x=float(rng.uniform(-0.03, 0.03)),
        )

    def jitter(self, rng: np.random.Generator) -> Anatomy:
        """The same patient on another day: positioning and exposure change slightly."""
        return replace(
            self,
            shift_x=self.shift_x + float(rng.uniform(-0.02, 0.02)),
            dome=self.dome + float(rng.uniform(-0.02, 0.02)),
            brightness=self.brightness * float(rng.uniform(0.95, 1.05)),
        )


class _Canvas:
    """Coordinate grids and an attenuation image; helpers return masks in [0, 1]."""

    def __init__(self, shape: tuple[int, int], rng: np.random.Generator) -> None:
        self.h, self.w = shape
        self.rng = rng
        # float32 throughout: half the memory traffic of float64, ample precision for <=16-bit output.
        self.y = np.linspace(-1, 1, self.h, dtype=np.float32)[:, None].repeat(self.w, axis=1)
        self.x = np.linspace(-1, 1, self.w, dtype=np.float32)[None, :].repeat(self.h, axis=0)
        self.att = np.zeros(shape, dtype=np.float32)
        self.boxes: dict[str, Box] = {}

    def ellipse(self, cx: float, cy: float, ax: float, ay: float, soft: float = 0.04) -> np.ndarray:
        """Soft-edged ellipse mask (edge width ``soft`` in normalised units)."""
        r = np.sqrt(((self.x - cx) / ax) ** 2 + ((self.y - cy) / ay) ** 2)
        return np.clip((1.0 - r) / soft + 0.5, 0.0, 1.0)

    def texture(self, sigma: float) -> np.ndarray:
        """Smoothed white noise scaled to unit standard deviation."""
        noise = self.rng.standard_normal((self.h, self.w), dtype=np.float32)
        t = ndimage.gaussian_filter(noise, sigma * self.h / 256)
        return t / (t.std() + 1e-9)

    def box(self, name: str, cx: float, cy: float, ax: float, ay: float) -> None:
        """Record a pixel-space box around a normalised ellipse (union with an existing one)."""
        x0 = (cx - ax + 1) / 2 * (self.w - 1)
        x1 = (cx + ax + 1) / 2 * (self.w - 1)
        y0 = (cy - ay + 1) / 2 * (self.h - 1)
        y1 = (cy + ay + 1) / 2 * (self.h - 1)
        x0, x1 = max(0.0, x0), min(self.w - 1.0, x1)
        y0, y1 = max(0.0, y0), min(self.h - 1.0, y1)
        if name in self.boxes:
            a = self.boxes[name]
            x0, y0, x1, y1 = min(a[0], x0), min(a[1], y0), max(a[2], x1), max(a[3], y1)
        self.boxes[name] = (x0, y0, x1, y1)


def _sides(side: str) -> tuple[int, ...]:
    """Image-x sign of the patient's side on a frontal view (patient right = image left)."""
    return {"R": (-1,), "L": (1,), "B": (-1, 1)}[side]


def _frontal(c: _Canvas, a: Anatomy, findings: list[Finding]) -> None:
    """Frontal (PA/AP) chest: anatomy first, then findings that change it, then overlays."""
    by = {f.name: f for f in findings}
    x = c.x - a.shift_x
    body = c.ellipse(a.shift_x, 0.15, a.body_w, 1.15, soft=0.08)
    c.att += 0.42 * body

    emph = by.get("emphysema")
    dome = a.dome + (0.1 * emph.severity if emph else 0.0)  # emphysema flattens and lowers the domes
    heart_w = a.heart_w
    heart_h = a.heart_h
    if (f := by.get("cardiomegaly")) is not None:
        # Large enough to survive a 32-px downsampling (the demo's training size): the known answer needs it.
        heart_w += 0.24 * f.severity
        heart_h += 0.08 * f.severity

    # Lungs, cut below by the diaphragm domes.
    lungs = np.zeros_like(c.att)
    lung_side = {}
    for s in (-1, 1):
        cx = a.shift_x + s * a.lung_gap
        m = c.ellipse(cx, -0.05, a.lung_w, a.lung_h)
        dome_y = dome - 0.12 + 0.18 * ((c.x - cx) / a.lung_w) ** 2  # dome peaks mid-lung, angles lower
        m *= np.clip((dome_y - c.y) / 0.03 + 0.5, 0, 1)
        lung_side[s] = m
        lungs += m
    heart = c.ellipse(a.shift_x + 0.09, 0.3, heart_w, heart_h, soft=0.06)
    mediast = np.clip((0.11 - np.abs(x)) / 0.02 + 0.5, 0, 1) * np.clip((0.45 - c.y) / 0.05, 0, 1)
    if (f := by.get("enlarged_cardiomediastinum")) is not None:
        wide = np.clip((0.11 + 0.1 * f.severity - np.abs(x)) / 0.02 + 0.5, 0, 1)
        mediast = np.maximum(mediast, wide * np.clip((0.05 - c.y) / 0.05, 0, 1) * (c.y > -0.7))
        c.box("enlarged_cardiomediastinum", a.shift_x, -0.3, 0.21 + 0.1 * f.severity, 0.35)
    soft_tissue = np.maximum(heart, mediast)
    air = lungs * (1 - soft_tissue)
    lung_dark = 0.3 + (0.08 * emph.severity if emph else 0.0)
    c.att -= lung_dark * air
    if emph is not None:
        c.box("emphysema", a.shift_x, -0.05, a.lung_gap + a.lung_w, a.lung_h)
    c.att += 0.14 * mediast + 0.06 * heart * (1 - mediast)
    if (f := by.get("cardiomegaly")) is not None:
        c.box("cardiomegaly", a.shift_x + 0.09, 0.3, heart_w, heart_h)
    spine = np.clip((0.05 - np.abs(x)) / 0.015 + 0.5, 0, 1) * body
    c.att += 0.12 * spine

    mark_mask = air.copy()
    if (f := by.get("pleural_effusion")) is not None:
        for s in _sides(f.side):
            cx = a.shift_x + s * a.lung_gap
            # Fluid level rises laterally (meniscus) and blunts the costophrenic angle.
            level = dome - 0.12 - (0.1 + 0.2 * f.severity) - 0.2 * np.clip((c.x - cx) * s / a.lung_w, 0, 1)
            fluid = lung_side[s] * np.clip((c.y - level) / 0.06, 0, 1) * (1 - soft_tissue)
            c.att += (lung_dark + 0.04) * fluid
            mark_mask *= 1 - fluid  # fluid hides the vessels behind it
            c.box("pleural_effusion", cx, dome - 0.12, a.lung_w + 0.05, 0.15 + 0.25 * f.severity)
    # Vascular markings (absent where a pneumothorax collapses the lung, fewer with emphysema).
    markings = c.texture(1.5) * 0.025 + np.clip(c.texture(3.0), 0, None) * 0.02
    if (f := by.get("pneumothorax")) is not None:
        for s in _sides(f.side):
            cx = a.shift_x + s * a.lung_gap
            # Pleural air: the lateral-apical rim of the lung, beyond a curved visceral pleural line.
            edge = a.lung_w * (1 - 0.45 * f.severity)
            r = np.sqrt(((c.x - cx) / a.lung_w) ** 2 + ((c.y + 0.05) / a.lung_h) ** 2)
            rim = lung_side[s] * np.clip((r - (edge / a.lung_w)) / 0.03 + 0.5, 0, 1) * ((c.x - cx) * s > -0.05)
            rim *= c.y < 0.25
            mark_mask *= 1 - rim
            c.att -= 0.06 * rim
            line = np.exp(-(((r - edge / a.lung_w) / 0.012) ** 2)) * lung_side[s] * ((c.x - cx) * s > -0.05)
            c.att += 0.12 * line * (c.y < 0.25)
            c.box("pneumothorax", cx + s * a.lung_w * 0.4, -0.25, a.lung_w * 0.7, a.lung_h * 0.6)
    c.att += markings * mark_mask * (0.5 if emph else 1.0)

    # Ribs: bright curved bands over the lungs (all eight per side in one pass); clavicles at the top.
    for s in (-1, 1):
        cx = a.shift_x + s * a.lung_gap
        u = (c.y - (-0.62 + a.rib_phase) - 0.22 * ((c.x - cx + s * 0.3) / 0.6) ** 2) / 0.15
        k = np.rint(u)
        band = np.exp(-((((u - k) * 0.15) / 0.022) ** 2)) * ((k >= 0) & (k <= 7))
        band *= (np.abs(c.x - cx) < a.lung_w + 0.04) * body
        c.att += 0.07 * band
        if (f := by.get("fracture")) is not None and (s == -1) == (f.side in ("R", "B")):
            gap = (np.abs(c.x - cx) < 0.025) & (k == 4)
            c.att -= 0.07 * band * gap  # cortical break
            c.att += 0.05 * np.roll(band * gap, 4, axis=0)  # displaced fragment
            c.box("fracture", cx, -0.62 + a.rib_phase + 0.6 + 0.22 * (0.3 / 0.6) ** 2, 0.06, 0.06)
        clav = np.exp(-(((c.y - (-0.78 + 0.15 * np.abs(c.x - a.shift_x))) / 0.03) ** 2)) * (np.abs(x) < 0.75)
        c.att += 0.04 * clav * (np.sign(c.x - a.shift_x) == s)

    # Findings in the lungs.
    for name, n_blobs, radius, dens in (("nodule", 2, 0.035, 0.2), ("mass", 1, 0.11, 0.25)):
        if (f := by.get(name)) is not None:
            for i in range(n_blobs):
                s = _sides(f.side)[i % len(_sides(f.side))]
                cx = a.shift_x + s * a.lung_gap + float(c.rng.uniform(-0.1, 0.1))
                cy = float(c.rng.uniform(-0.4, 0.2))
                r = radius * (0.7 + 0.3 * f.severity)
                c.att += dens * c.ellipse(cx, cy, r, r * c.w / c.h, soft=0.4)
                c.box(name, cx, cy, r, r)
    if (f := by.get("calcification")) is not None:
        for _ in range(3):
            s = _sides(f.side)[0]
            cx = a.shift_x + s * a.lung_gap + float(c.rng.uniform(-0.12, 0.12))
            cy = float(c.rng.uniform(-0.3, 0.3))
            c.att += 0.4 * c.ellipse(cx, cy, 0.015, 0.015, soft=0.5)
            c.box("calcification", cx, cy, 0.02, 0.02)
    if (f := by.get("opacity")) is not None:
        for s in _sides(f.side):
            cx = a.shift_x + s * a.lung_gap
            cy = float(c.rng.uniform(-0.15, 0.2))
            region = c.ellipse(cx, cy, a.lung_w * 0.9, 0.32, soft=0.5) * lung_side[s]
            # Confluent patches (mostly filled) so the opacity survives downsampling to the demo's 32 px.
            patches = np.clip(c.texture(6.0) + 1.0, 0, None)
            c.att += 0.25 * f.severity * region * np.minimum(patches, 1.5)
            c.box("opacity", cx, cy, a.lung_w * 0.9, 0.32)
    if (f := by.get("consolidation")) is not None:
        for s in _sides(f.side):
            cx = a.shift_x + s * (a.lung_gap + 0.05)
            region = c.ellipse(cx, 0.2, a.lung_w * 0.75, 0.18, soft=0.25) * lung_side[s]
            bronchogram = np.clip(-c.texture(1.2) - 1.4, 0, 1)  # air bronchograms inside the density
            c.att += 0.4 * f.severity * region * (1 - 0.6 * bronchogram)
            c.box("consolidation", cx, 0.2, a.lung_w * 0.75, 0.18)
    if (f := by.get("atelectasis")) is not None:
        for s in _sides(f.side):
            cx = a.shift_x + s * a.lung_gap
            cy = dome - 0.32
            tilt = c.y - (cy + 0.12 * (c.x - cx) * s)
            plate = np.exp(-((tilt / (0.012 + 0.012 * f.severity)) ** 2)) * lung_side[s]
            c.att += 0.3 * plate
            c.box("atelectasis", cx, cy, a.lung_w * 0.9, 0.08)
    if (f := by.get("edema")) is not None:
        # Bilateral perihilar ("bat wing") haze plus septal lines at the bases.
        haze = sum(c.ellipse(a.shift_x + s * 0.3, 0.0, 0.3, 0.35, soft=0.9) for s in (-1, 1)) * lungs
        c.att += 0.35 * f.severity * haze
        c.box("edema", a.shift_x, 0.0, 0.6, 0.35)
    if (f := by.get("fibrosis")) is not None:
        net = np.abs(c.texture(0.9))
        reticular = (net < 0.25).astype(float) * lungs * np.clip((c.y - 0.0) / 0.3, 0, 1)
        c.att += 0.12 * f.severity * ndimage.gaussian_filter(reticular, 0.6)
        c.box("fibrosis", a.shift_x, 0.25, a.lung_gap + a.lung_w, 0.3)
    if (f := by.get("pleural_thickening")) is not None:
        for s in _sides(f.side):
            cx = a.shift_x + s * a.lung_gap
            r = np.sqrt(((c.x - cx) / a.lung_w) ** 2 + ((c.y + 0.05) / a.lung_h) ** 2)
            cap = np.exp(-(((r - 0.93) / 0.05) ** 2)) * (c.y < -0.3) * body
            c.att += 0.2 * cap
            c.box("pleural_thickening", cx, -0.45, a.lung_w, 0.2)
    if (f := by.get("aortic_enlargement")) is not None:
        knob = c.ellipse(a.shift_x + 0.12 + 0.04 * f.severity, -0.4, 0.07 + 0.04 * f.severity, 0.08, soft=0.3)
        c.att += 0.2 * knob * (1 - mediast * 0.5)
        c.box("aortic_enlargement", a.shift_x + 0.12, -0.4, 0.13, 0.1)
    if (f := by.get("hernia")) is not None:
        # Retrocardiac gas bubble with an air-fluid level.
        bubble = c.ellipse(a.shift_x + 0.05, 0.35, 0.08, 0.07, soft=0.2)
        c.att -= 0.18 * bubble * (c.y < 0.35)
        c.att += 0.05 * bubble * (c.y >= 0.35)
        c.box("hernia", a.shift_x + 0.05, 0.35, 0.09, 0.08)
    if (f := by.get("support_devices")) is not None:
        # Endotracheal / nasogastric tube down the midline and a pacemaker generator.
        tube = np.exp(-(((c.x - a.shift_x - 0.02 - 0.05 * (c.y + 1) ** 2) / 0.008) ** 2)) * (c.y < 0.7)
        c.att += 0.35 * tube
        c.att += 0.6 * c.ellipse(a.shift_x - 0.55, -0.65, 0.07, 0.05, soft=0.1)
        c.box("support_devices", a.shift_x - 0.25, -0.1, 0.4, 0.8)


def _lateral(c: _Canvas, a: Anatomy, findings: list[Finding]) -> None:
    """Lateral chest: one lung field, heart anterior (image left), spine posterior (image right)."""
    by = {f.name: f for f in findings}
    body = c.ellipse(a.shift_x, 0.15, a.body_w * 0.95, 1.15, soft=0.08)
    c.att += 0.45 * body
    lung = c.ellipse(a.shift_x + 0.05, -0.05, 0.55, a.lung_h + 0.05) * np.clip((a.dome - c.y) / 0.04, 0, 1)
    hw = a.heart_w + (0.1 * by["cardiomegaly"].severity if "cardiomegaly" in by else 0.0)
    heart = c.ellipse(a.shift_x - 0.3, 0.25, hw, a.heart_h + 0.05, soft=0.08)
    c.att -= 0.28 * lung * (1 - heart)
    c.att += c.texture(1.5) * 0.02 * lung
    spine = np.clip((0.07 - np.abs(c.x - a.shift_x - 0.62)) / 0.02 + 0.5, 0, 1) * body
    c.att += 0.18 * spine
    if "cardiomegaly" in by:
        c.box("cardiomegaly", a.shift_x - 0.3, 0.25, hw, a.heart_h + 0.05)
    if (f := by.get("pleural_effusion")) is not None:
        # Posterior costophrenic sulcus fills first.
        fluid = lung * np.clip((c.y - (a.dome - 0.1 - 0.2 * f.severity) + 0.3 * (c.x - 0.3)) / 0.05, 0, 1)
        c.att += 0.3 * fluid
        c.box("pleural_effusion", a.shift_x + 0.3, a.dome - 0.1, 0.3, 0.25)
    for name, dens, r in (("nodule", 0.2, 0.035), ("mass", 0.25, 0.1), ("consolidation", 0.25, 0.18),
                          ("opacity", 0.12, 0.22), ("atelectasis", 0.15, 0.12), ("edema", 0.12, 0.35)):
        if (f := by.get(name)) is not None:
            cx, cy = a.shift_x + float(c.rng.uniform(-0.1, 0.3)), float(c.rng.uniform(-0.3, 0.2))
            c.att += dens * f.severity * c.ellipse(cx, cy, r, r, soft=0.4) * lung
            c.box(name, cx, cy, r, r)
    if "support_devices" in by:
        tube = np.exp(-(((c.x - a.shift_x + 0.1) / 0.008) ** 2)) * (c.y < 0.6)
        c.att += 0.35 * tube


def render(
    findings: list[Finding],
    *,
    anatomy: Anatomy,
    rng: np.random.Generator,
    shape: tuple[int, int],
    lateral: bool = False,
    noise: float = 0.015,
) -> tuple[np.ndarray, dict[str, Box]]:
    """Draw one radiograph: float32 image in [0, 1] (display convention) and boxes per drawn finding.

    The same ``rng`` state gives the same image, so writers seed one generator per image.
    """
    c = _Canvas(shape, rng)
    (_lateral if lateral else _frontal)(c, anatomy, findings)
    c.att += noise * rng.standard_normal(shape, dtype=np.float32)
    img = np.clip((c.att + 0.08) * anatomy.brightness, 0.0, 1.0)
    return img.astype(np.float32), c.boxes
