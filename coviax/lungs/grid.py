"""A coarser grid for the lung steps that are about shape and topology, not about the outline.

Finding the body, the air components that are lungs, the trachea and the cut between right and
left lung needs no sub-millimetre detail, but at full resolution a 505-slice scan of
0.84 x 0.84 x 0.625 mm has 132 M voxels and these steps took 20 of the classical method's 25 s
on two cores. They run on every ``step``-th voxel instead (about :data:`COARSE_MM` apart), and the
lung's outline is then found again at full resolution (``classical.py``). Striding is used, not
averaging: it keeps the HU values the thresholds were chosen for.
"""

from __future__ import annotations

import numpy as np

#: Scans with more voxels than this (thin-slice reconstructions: 512 x 512 x 160 and up) use the coarse
#: grid. Smaller ones take under 3 s at full resolution and keep exactly the full-resolution result,
#: which the evaluation's reference lungs and the lung network's training targets were made with.
COARSE_ABOVE_VOXELS = 40_000_000
#: The coarse grid's spacing aimed at, mm. 0.84 mm pixels and 0.625 mm slices become 1.7 x 1.7 x 1.9 mm;
#: a 1.5 mm or 5 mm axis stays as it is.
COARSE_MM = 1.6


def coarse_step(spacing_zyx, shape) -> tuple[int, int, int]:
    """Every how many voxels, along z, y and x, the coarse grid samples a scan of ``shape``."""
    if int(np.prod(shape)) <= COARSE_ABOVE_VOXELS:
        return 1, 1, 1
    z, y, x = (max(1, int(round(COARSE_MM / float(s)))) for s in spacing_zyx)
    return z, y, x


def to_coarse(array: np.ndarray, step: tuple[int, int, int]) -> np.ndarray:
    """Every ``step``-th voxel of ``array`` (a contiguous copy; the array itself when step is 1)."""
    if step == (1, 1, 1):
        return array
    return np.ascontiguousarray(array[:: step[0], :: step[1], :: step[2]])


def to_fine(coarse: np.ndarray, step: tuple[int, int, int], shape: tuple[int, ...]) -> np.ndarray:
    """Each coarse voxel repeated over the ``step`` block it stands for, cut to ``shape``."""
    if step == (1, 1, 1):
        return coarse
    (nz, ny, nx), (sz, sy, sx) = coarse.shape, step
    # One copy through a broadcast view, not three np.repeat passes over ever larger arrays.
    blocks = np.broadcast_to(coarse[:, None, :, None, :, None], (nz, sz, ny, sy, nx, sx))
    return blocks.reshape(nz * sz, ny * sy, nx * sx)[: shape[0], : shape[1], : shape[2]]
