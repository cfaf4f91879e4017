"""Where the slices of a series lie: one orientation and size for all, a plausible pixel spacing, and
an order along the slice normal without duplicate positions or gaps. The messages name the files and
the positions ("a gap of 10.00 mm between ... (about 1 slice(s) missing)")."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from coviax.errors import GeometryError, ScanError
from coviax.io.dicom_file import DicomSlice
from coviax.io.pixels import MAX_SLICE_PIXELS
from coviax.io.tags import plain_numbers, tag_dimension, tag_numbers

#: Relative tolerances for the geometry checks.
GAP_FACTOR = 1.5  # a gap larger than 1.5x the median spacing is a missing slice
DUPLICATE_FRACTION = 0.01  # two slices closer than 1 % of the spacing are duplicates
ORIENTATION_TOLERANCE = 1e-3
#: Pixel spacing (mm) a CT image can have; values outside are a broken header.
PIXEL_SPACING_RANGE = (0.01, 50.0)


def slice_grid(first: DicomSlice) -> tuple[np.ndarray, int, int, np.ndarray]:
    """The first slice's orientation (6 cosines), rows, columns and pixel spacing, checked."""
    iop0 = tag_numbers(first.ds, "ImageOrientationPatient", "(0020,0037)", first.path, "cannot place the slices", 6)
    rows, cols = tag_dimension(first.ds, "Rows", "(0028,0010)", first.path), tag_dimension(
        first.ds, "Columns", "(0028,0011)", first.path)
    if rows * cols > MAX_SLICE_PIXELS:
        raise ScanError(f"{first.path}: Rows x Columns = {rows}x{cols} exceeds the limit of {MAX_SLICE_PIXELS} pixels")
    pixel_spacing = tag_numbers(first.ds, "PixelSpacing", "(0028,0030)", first.path, "cannot measure volumes", 2)
    low, high = PIXEL_SPACING_RANGE
    if np.any(pixel_spacing <= 0):
        raise GeometryError(
            f"{first.path}: PixelSpacing (0028,0030) is {plain_numbers(pixel_spacing, 6)}; both values must be positive "
            "(mm between pixel centres); cannot measure volumes"
        )
    if np.any(pixel_spacing < low) or np.any(pixel_spacing > high):
        raise GeometryError(
            f"{first.path}: PixelSpacing (0028,0030) is {plain_numbers(pixel_spacing, 6)} mm; a CT image has {low:g} to "
            f"{high:g} mm between pixel centres; cannot measure volumes"
        )
    return iop0, rows, cols, pixel_spacing


def slice_positions(slices: list[DicomSlice], iop0: np.ndarray, rows: int, cols: int) -> list[np.ndarray]:
    """Each slice's ImagePositionPatient, after checking it has the first slice's orientation and size."""
    first = slices[0]
    positions_xyz = []
    for s in slices:
        positions_xyz.append(tag_numbers(s.ds, "ImagePositionPatient", "(0020,0032)", s.path,
                                      "cannot place the slice in the volume", 3))
        iop = tag_numbers(s.ds, "ImageOrientationPatient", "(0020,0037)", s.path, "cannot place the slices", 6)
        if np.max(np.abs(iop - iop0)) > ORIENTATION_TOLERANCE:
            raise GeometryError(
                f"mixed orientations: {s.path} has ImageOrientationPatient {plain_numbers(iop, 4)} but "
                f"{first.path} has {plain_numbers(iop0, 4)}; one series must have one orientation"
            )
        if (tag_dimension(s.ds, "Rows", "(0028,0010)", s.path), tag_dimension(s.ds, "Columns", "(0028,0011)", s.path)) != (
                rows, cols):
            raise GeometryError(
                f"{s.path}: {s.ds.Rows}x{s.ds.Columns} pixels but {first.path} has {rows}x{cols}"
            )
    return positions_xyz


def order_along(normal: np.ndarray, slices: list[DicomSlice], positions_xyz: list[np.ndarray],
                 where: Path) -> tuple[list[DicomSlice], list[np.ndarray], float]:
    """The slices sorted along the slice normal, with their positions and the median step (mm), after
    checking for duplicate positions and gaps."""
    positions = np.array([np.dot(p, normal) for p in positions_xyz])
    order = np.argsort(positions, kind="stable")
    slices = [slices[i] for i in order]
    positions_xyz = [positions_xyz[i] for i in order]
    positions = positions[order]
    steps = np.diff(positions)
    median_step = float(np.median(steps))
    if median_step <= 0:
        raise GeometryError(f"{where}: all {len(slices)} slices share one position along the slice normal")
    for i, step in enumerate(steps):
        if step < DUPLICATE_FRACTION * median_step:
            raise GeometryError(
                f"duplicate slice position: {slices[i].path} and {slices[i + 1].path} are both at "
                f"{positions[i]:.2f} mm along the slice normal; remove the duplicate"
            )
        if step > GAP_FACTOR * median_step:
            missing = int(round(step / median_step)) - 1
            raise GeometryError(
                f"missing slice: a gap of {step:.2f} mm between {slices[i].path} ({positions[i]:.2f} mm) and "
                f"{slices[i + 1].path} ({positions[i + 1]:.2f} mm), {step / median_step:.1f}x the median "
                f"spacing of {median_step:.2f} mm (about {missing} slice(s) missing)"
            )
    return slices, positions_xyz, median_step
