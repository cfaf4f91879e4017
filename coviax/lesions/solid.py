"""Solid lesions enclosed by lung that the U-Net calls "outside the lung": they are opacity.

U-Net B learned "dense tissue at the edge of the lung is chest wall, heart or mediastinum". On
patients it never saw it applies that to solid lesions too: inside the lung cavity it labels
68 % of LIDC-IDRI-0001's radiologist-outlined nodule (median -32 HU) background, 20 % healthy
lung and 12 % vessel -- 0 % opacity. A reader calls a solid, non-tubular lesion inside the lung
consolidation (or a nodule), never healthy lung.

The rule, stated so a reader can check it: a 26-connected region of voxels denser than
:data:`SOLID_HU` that the network calls background, that lies in the lung cavity, of whose
exposed faces at most :data:`MAX_OUTSIDE_FACE_SHARE` touch tissue outside the cavity and whose
median density is soft tissue (above :data:`MIN_MEDIAN_HU`), is a solid lesion: consolidation
above :data:`CONSOLIDATION_HU`, ground glass between. Enclosed is what tells
it from chest wall, mediastinum or heart that a lung mask let in: those are continuous with the
tissue outside the cavity; a region surrounded by lung on every side cannot be any of them.
Vessels are not affected (the network labels them vessel, not background).

What it does and does not do (measured 2026-12-08 with the hybrid lung cavity, eval/RESULTS.md):
the LIDC nodule 0 -> 67 % called opacity, its dense core (> -100 HU) 95 % consolidation; on normal
lungs 0 to +0.2 mL (TotalSegmentator's chest CT and the bundled CT: VRall unchanged to 0.01 points);
consolidation *at the
pleura* is not enclosed and stays the network's call -- that gap is the lesion network's to close
(issue 26). Written by hand: a face-contact count per component is
a few lines of numpy on cc3d's labels, and no library computes it.
"""

from __future__ import annotations

import cc3d
import numpy as np

from coviax.labels import Label

#: Voxels above this are solid enough to be a lesion's body (the LIDC nodule's rim reaches -560 HU).
SOLID_HU = -500
#: Solid voxels above this are consolidation, below it ground glass (the trainer's rule for outlined tumours).
CONSOLIDATION_HU = -300
#: At most this share of a region's exposed faces may touch voxels outside the lung cavity (the LIDC
#: nodule touches the pleura with 5.6 % of its faces; 0.08-0.12 gave the same results on every case).
MAX_OUTSIDE_FACE_SHARE = 0.10
#: A solid lesion has soft-tissue density through and through: the LIDC nodule's region has a median of
#: +63 HU, inserted consolidation 9 to 75 HU. A lung hilum that a lung mask's closing encloses is vessels,
#: airway walls, fat and partial volume with air: median -117 HU on the bundled CT (67 mL it would
#: otherwise call consolidation).
MIN_MEDIAN_HU = -50
#: Smaller regions are left alone (a few voxels of partial volume).
MIN_SOLID_ML = 0.1


def label_enclosed_solid_lesions(labels: np.ndarray, raw: np.ndarray, cavity: np.ndarray, hu: np.ndarray,
                                 voxel_ml: float) -> int:
    """Label enclosed solid regions (see the module docstring) as opacity in ``labels``, in place.

    ``raw`` is the network's own classes (background 0 included), ``labels`` the engine's labels
    inside ``cavity``. Returns the number of voxels changed.
    """
    candidates = cavity & (raw == Label.BACKGROUND) & (hu > SOLID_HU)
    if not candidates.any():
        return 0
    box = _box(candidates, pad=1)
    cand, cav, sub_hu = candidates[box], cavity[box], hu[box]
    components = cc3d.connected_components(cand, connectivity=26)
    n = int(components.max())
    exposed = np.zeros(n + 1, np.int64)
    outside = np.zeros(n + 1, np.int64)
    for axis in range(3):
        for step in (1, -1):
            here = [slice(None)] * 3
            there = [slice(None)] * 3
            here[axis], there[axis] = (slice(0, -1), slice(1, None)) if step == 1 else (slice(1, None), slice(0, -1))
            owner = components[tuple(here)]
            face = (owner > 0) & ~cand[tuple(there)]  # a face of a region onto a voxel not in the region
            exposed += np.bincount(owner[face], minlength=n + 1)
            outside += np.bincount(owner[face & ~cav[tuple(there)]], minlength=n + 1)
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    enclosed = (outside <= MAX_OUTSIDE_FACE_SHARE * exposed) & (sizes * voxel_ml >= MIN_SOLID_ML)
    enclosed[0] = False
    for region_id in np.flatnonzero(enclosed):  # few regions pass; each one's median density decides
        enclosed[region_id] = float(np.median(sub_hu[components == region_id])) > MIN_MEDIAN_HU
    solid = enclosed[components]
    if not solid.any():
        return 0
    region = labels[box]
    region[solid] = np.where(sub_hu[solid] > CONSOLIDATION_HU, np.uint8(Label.CONSOLIDATION), np.uint8(Label.GGO))
    return int(solid.sum())


def _box(mask: np.ndarray, pad: int) -> tuple[slice, ...]:
    spans = (np.flatnonzero(mask.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    return tuple(slice(max(0, int(ix[0]) - pad), min(n, int(ix[-1]) + 1 + pad)) for ix, n in zip(spans, mask.shape))
