"""Lesion clean-up after the U-Net: thin rims of "lesion" that no lesion core holds are healthy lung.

At the lung's edge (pleura, diaphragm dome, heart border, fissures) one or two voxels are a mix
of lung and soft tissue and read like ground glass. A real opacity, even a small one, has a core
thicker than that. So the lesion mask (GGO and consolidation together) is opened by
reconstruction: the voxels more than :data:`CORE_RADIUS_MM` from any non-lesion voxel are the
cores, and every lesion component (26-connected) that holds a core is kept whole, its own rim
included; components without a core go back to healthy lung.

Measured (``make eval``, docs in the model card): on the held-out TotalSegmentator chest CT it
removes about a quarter of the false lesion volume, and on held-out phantoms it changes Dice by
less than 0.01 and the VRall error by less than 0.3 points. Written by hand because no library
has an opening by reconstruction in mm on anisotropic voxels; ``edt`` (distances in mm) and
``cc3d`` (components) do the work, inside the lesions' bounding box.
"""

from __future__ import annotations

import cc3d
import edt
import fastremap
import numpy as np

from coviax.labels import Label

#: A lesion is kept if some voxel of it lies more than this far from anything that is not lesion:
#: a core at least 3 mm across (a rim of one or two 1.5 mm voxels has none).
CORE_RADIUS_MM = 1.5


def drop_coreless_lesions(labels: np.ndarray, spacing_zyx, radius_mm: float = CORE_RADIUS_MM) -> int:
    """Turn lesion components without a core into healthy lung, in place; returns the voxels changed."""
    lesion = labels >= Label.GGO
    if not lesion.any() or radius_mm <= 0:
        return 0
    zs, ys, xs = (np.flatnonzero(lesion.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    # one voxel of margin, so that inside the scan the box's border is non-lesion
    box = tuple(slice(max(0, int(ix[0]) - 1), min(n, int(ix[-1]) + 2)) for ix, n in zip((zs, ys, xs), labels.shape))
    sub = lesion[box]
    # black_border: the scan's edge is not lesion either, so a lesion cut by the field of view keeps its depth
    depth = edt.edt(sub, anisotropy=tuple(float(s) for s in spacing_zyx), black_border=False)
    components = cc3d.connected_components(sub, connectivity=26)
    cored = np.unique(components[depth > radius_mm])
    cored = cored[cored > 0]
    drop = fastremap.mask(components, cored) > 0 if cored.size else sub  # components left unmasked: no core
    region = labels[box]
    region[drop] = Label.HEALTHY_LUNG
    return int(drop.sum())
