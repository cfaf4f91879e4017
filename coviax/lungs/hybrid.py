"""The default lung cavity: our lung network joined with the classical method (``--lungs hybrid``).

Why two methods and not one: each loses dense tissue the other keeps. The lung network cuts
consolidation and solid tumours at the pleura out as if they were chest wall (held-out phantoms:
2-71 % of pleural consolidation kept; LIDC-IDRI-0001's outlined nodule 22 % inside), but it is
the only method that works on scans cropped to one side of the chest. The classical method's
20 mm pleural closing keeps what the network drops on whole-chest scans (the LIDC nodule 100 %
inside, pleural consolidation 61-94 %) and fails on crops (pyCERR: a fifth of the lung). Their
union keeps the better of the two on every held-out patient we have (numbers in eval/RESULTS.md,
default path first). The price: the closing's hilar and cardiac tissue and the classical
method's time.

Where both call a voxel lung, the network's right/left side is kept; voxels only the classical
method has keep its side, except those denser than :data:`ENHANCED_HU`: contrast-filled blood
of the heart, aorta and hilar vessels, which no lung tissue or consolidation reaches (TotalSegmentator's
heart inside the mask: LIDC-IDRI-0001 0.76 -> 0.09 mL, its chest CT 0.51 -> 0.36 mL; the lung network
alone 0.00 / 0.01 mL; nothing else measured changed). Each lung's holes are filled afterwards, as
both methods do.
"""

from __future__ import annotations

import numpy as np

from coviax.lungs.classical import fill_lung_holes, segment_lungs_classical
from coviax.lungs.unet import segment_lungs_unet

#: Voxels only the classical method calls lung are left out above this HU (contrast-enhanced blood).
ENHANCED_HU = 150


def segment_lungs_hybrid(volume, weights: str | None = None, device: str = "cpu"):
    """Lung mask of ``volume``: the lung network's mask united with the classical method's.

    Raises
    ------
    WeightsNotFoundError
        when no lung network checkpoint is found (as ``--lungs unet``).
    """
    from coviax.lungs import LungMask

    network = segment_lungs_unet(volume, weights=weights, device=device)
    classical = segment_lungs_classical(volume)
    added = np.where(volume.hu > ENHANCED_HU, np.uint8(0), classical.labels)
    labels = np.where(network.labels > 0, network.labels, added)
    added_ml = float(np.count_nonzero(labels) - np.count_nonzero(network.labels)) * volume.voxel_volume_ml
    notes = network.notes + [f"classical method joined: {added_ml:.0f} mL the network left out"] + [
        f"classical: {n}" for n in classical.notes]
    return LungMask(labels=fill_lung_holes(labels), method="hybrid", notes=notes)
