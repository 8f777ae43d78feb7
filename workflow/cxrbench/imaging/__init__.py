"""Radiograph imaging: decode any source, map intensities, resize, write standard PNGs."""
