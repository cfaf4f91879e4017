"""Fixed HU bands (the SlicerLungCTAnalyzer bands of FIELD_NOTES) -- the evaluation baseline.

ventilated -950..-750 -> healthy lung; infiltration -750..-400 -> GGO;
collapsed -400..0 -> consolidation; 0..3000 -> vessel. Emphysema (< -950)
counts as healthy lung. No learning, no morphology: what any viewer with a
window setting could do, so every engine must beat it to be worth shipping.
"""

from __future__ import annotations

import numpy as np

from coviax.labels import Label
from coviax.lesions import LesionLabels

BANDS = ((-750, Label.GGO), (-400, Label.CONSOLIDATION), (0, Label.VESSEL))


class ThresholdEngine:
    name = "threshold"

    def segment(self, volume, lungs) -> LesionLabels:
        hu = volume.hu
        labels = np.where(lungs.cavity, np.uint8(Label.HEALTHY_LUNG), np.uint8(Label.BACKGROUND))
        for lower, label in BANDS:
            labels[(hu >= lower) & lungs.cavity] = label
        return LesionLabels(labels=labels, engine=self.name, model="hu-bands:slicer-lung-ct-analyzer")
