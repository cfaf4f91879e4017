"""The label codes of a COViaX label volume, fixed in one place.

Every engine, export, phantom and trainer uses these codes. Changing one
breaks every stored result, so the report carries a schema version.
"""

from __future__ import annotations

import enum


class Label(enum.IntEnum):
    """Per-voxel class in a lesion label volume (uint8)."""

    BACKGROUND = 0  # outside the lung cavity
    HEALTHY_LUNG = 1  # aerated lung parenchyma
    VESSEL = 2  # pulmonary vessels (and bronchial walls) inside the lung
    GGO = 3  # ground-glass opacity
    CONSOLIDATION = 4  # consolidation

    @property
    def display_name(self) -> str:
        return _DISPLAY_NAMES[self]


_DISPLAY_NAMES = {
    Label.BACKGROUND: "background",
    Label.HEALTHY_LUNG: "healthy lung",
    Label.VESSEL: "vessel",
    Label.GGO: "ground-glass opacity",
    Label.CONSOLIDATION: "consolidation",
}

#: Classes that count as lung damage in the ratios (VRall = GGO + consolidation).
LESION_LABELS = (Label.GGO, Label.CONSOLIDATION)

#: Everything inside the lung cavity: the denominator of every ratio.
LUNG_CAVITY_LABELS = (Label.HEALTHY_LUNG, Label.VESSEL, Label.GGO, Label.CONSOLIDATION)

#: Lung mask codes (as lungmask's R231 writes them): 1 right lung, 2 left lung.
RIGHT_LUNG = 1
LEFT_LUNG = 2

#: Overlay colours (RGB) used by the PNG montage, the DICOM SEG and the 3D view.
COLOURS = {
    Label.HEALTHY_LUNG: (80, 160, 255),
    Label.VESSEL: (220, 60, 60),
    Label.GGO: (255, 210, 0),
    Label.CONSOLIDATION: (255, 110, 0),
}
