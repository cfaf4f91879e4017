"""Classical lung segmentation: thresholds and morphology, no trained weights.

Steps (each a function below):

1. body: tissue above -500 HU, largest 3D component, holes filled slice by slice;
2. air inside the body below -400 HU; the large components are lungs + airways;
3. trachea and main bronchi removed by following the airway lumen (< -900 HU)
   down from the top slice while its cross-section stays small;
4. split into right and left lung (eroding until two components appear, then a
   watershed), named by their side in patient coordinates;
5. hole filling that keeps dense lesions at the pleura inside: in each slice a
   closing (radius 20 mm) of each lung adds concavities of soft tissue density
   but never bone (> 300 HU) or anything outside the body.

Written by hand because no maintained library segments lungs without weights;
cc3d and fill_voids (both lungmask dependencies) do the heavy lifting.
Known limits: a lung that is mostly consolidated (denser than -400 HU over a
whole region reaching the mediastinum) can be cut short; the closing may add a
sliver of mediastinal fat at the hila.
"""

from __future__ import annotations

import cc3d
import fill_voids
import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

from coviax.labels import LEFT_LUNG, RIGHT_LUNG

BODY_HU = -500
AIR_HU = -400
AIRWAY_LUMEN_HU = -900
MAX_AIRWAY_AREA_MM2 = 450.0  # trachea ~ 2-3 cm^2; anything larger is lung
PLEURA_CLOSING_MM = 20.0
BONE_HU = 300
MIN_LUNG_ML = 50.0


def segment_lungs_classical(volume, close_pleura: bool = True):
    """Lung mask of ``volume`` by the classical method; see the module docstring.

    ``close_pleura=False`` skips step 5's 20 mm closing and keeps only the hole
    fills (vessels, airways inside the lung): on a scan without dense lesions at
    the pleura this is the lung as a reader outlines it, without the hilar and
    cardiac tissue the closing can pull in. The lung network's training targets
    and the evaluation's reference lungs are made this way.
    """
    from coviax.lungs import LungMask

    hu = volume.hu
    notes: list[str] = []
    body = body_mask(hu)
    air = (hu < AIR_HU) & body
    lungs = _largest_air_components(air, volume.voxel_volume_ml)
    if not lungs.any():
        return LungMask(labels=np.zeros(hu.shape, np.uint8), method="classical", notes=["no lungs found"])
    airways = trace_airways(hu, lungs, volume)
    lungs &= ~airways
    labels, split_note = split_left_right(lungs, volume)
    if split_note:
        notes.append(split_note)
    if close_pleura:
        labels = fill_pleural_lesions(labels, hu, body, volume)
        return LungMask(labels=labels, method="classical", notes=notes)
    return LungMask(labels=fill_lung_holes(labels), method="classical-unclosed", notes=notes)


def body_mask(hu: np.ndarray) -> np.ndarray:
    """Patient body: largest component above -500 HU, each slice's holes filled."""
    tissue = hu > BODY_HU
    if not tissue.any():
        return tissue
    body = cc3d.largest_k(tissue, k=1, connectivity=6) > 0
    del tissue
    for z in range(body.shape[0]):
        body[z] = fill_voids.fill(body[z], in_place=False)
    return body


def _largest_air_components(air: np.ndarray, voxel_ml: float) -> np.ndarray:
    """Air components that are lungs: not touching the slice border, large, at most two."""
    components = cc3d.connected_components(air, connectivity=6)
    counts = component_sizes(components)
    border = np.unique(
        np.concatenate(
            [components[:, 0, :].ravel(), components[:, -1, :].ravel(), components[:, :, 0].ravel(),
             components[:, :, -1].ravel()]
        )
    )
    counts[border] = 0
    order = np.argsort(counts)[::-1]
    keep = [i for i in order[:2] if counts[i] * voxel_ml >= MIN_LUNG_ML and counts[i] >= 0.1 * counts[order[0]]]
    mask = np.zeros(air.shape, bool)
    for label in keep:
        mask |= components == label
    return mask


def component_sizes(components: np.ndarray) -> np.ndarray:
    """Voxels per component id (index 0 = background set to 0), without an int64 copy of the volume
    (``np.bincount`` on a 500-slice volume would allocate 1 GiB)."""
    counts = np.asarray(cc3d.statistics(components)["voxel_counts"], dtype=np.int64)
    counts[0] = 0
    return counts


def trace_airways(hu: np.ndarray, lungs: np.ndarray, volume) -> np.ndarray:
    """Trachea and main bronchi: lumen followed down from the top while it stays small."""
    pixel_mm2 = volume.spacing_zyx[1] * volume.spacing_zyx[2]
    max_area = MAX_AIRWAY_AREA_MM2 / pixel_mm2
    top_to_bottom = range(hu.shape[0] - 1, -1, -1) if volume.superior_axis_sign > 0 else range(hu.shape[0])
    lumen = (hu < AIRWAY_LUMEN_HU) & lungs
    airways = np.zeros_like(lungs)
    previous = None
    radius = max(1, int(round(3.0 / volume.spacing_zyx[2])))
    grow = ndimage.generate_binary_structure(2, 1)
    for z in top_to_bottom:
        if not lungs[z].any():
            if previous is not None:
                break
            continue
        slice_lumen, n = ndimage.label(lumen[z])
        if n == 0:
            break
        areas = np.bincount(slice_lumen.ravel())
        if previous is None:
            # The top slice of the air tree: only the trachea if it is small.
            small = [i for i in range(1, n + 1) if areas[i] <= max_area]
            if len(small) != n or not small:
                break  # the lungs reach the top of the scan: no trachea to follow
            chosen = small
        else:
            near = ndimage.binary_dilation(previous, grow, iterations=radius)
            touching = np.unique(slice_lumen[near & (slice_lumen > 0)])
            chosen = [i for i in touching if areas[i] <= max_area]
            if not chosen:
                break
        current = np.isin(slice_lumen, chosen)
        airways[z] = ndimage.binary_dilation(current, grow, iterations=1) & lungs[z]
        previous = current
    return airways


def split_left_right(lungs: np.ndarray, volume) -> tuple[np.ndarray, str]:
    """Label right (1) and left (2) lung; returns the labels and a note if a fallback was used."""
    labels = np.zeros(lungs.shape, np.uint8)
    # Work inside the lungs' bounding box: the watershed's arrays are int32/int64 per voxel.
    z0, z1, y0, y1, x0, x1 = _bbox(lungs, pad=1)
    box = (slice(z0, z1), slice(y0, y1), slice(x0, x1))
    offset = np.array([z0, y0, x0], dtype=np.float64)
    crop, note = _split_crop(lungs[box], volume, offset)
    labels[box] = crop
    return labels, note


def _split_crop(lungs: np.ndarray, volume, offset: np.ndarray) -> tuple[np.ndarray, str]:
    labels = np.zeros(lungs.shape, np.uint8)
    seeds, note = _two_seeds(lungs)
    if seeds is None:
        # One lung-shaped blob that no erosion splits: cut at the body's midline.
        zz, yy, xx = np.nonzero(lungs)
        xx_full = xx + offset[2]
        mid_x = float(np.median(xx_full))
        right_side = _patient_x(volume, xx_full) < _patient_x(volume, np.array([mid_x]))[0]
        labels[zz[right_side], yy[right_side], xx[right_side]] = RIGHT_LUNG
        labels[zz[~right_side], yy[~right_side], xx[~right_side]] = LEFT_LUNG
        return labels, "lungs could not be separated by erosion; split at the midline"
    grown = watershed(np.zeros(lungs.shape, np.uint8), markers=seeds, mask=lungs)
    centroids = ndimage.center_of_mass(lungs, grown, [1, 2])
    x_patient = [volume.index_to_patient(np.asarray(c) + offset)[0] for c in centroids]
    # LPS: +x is patient left. The component with the smaller x is the right lung.
    right_id = 1 if x_patient[0] < x_patient[1] else 2
    labels[grown == right_id] = RIGHT_LUNG
    labels[(grown > 0) & (grown != right_id)] = LEFT_LUNG
    return labels, note


def _two_seeds(lungs: np.ndarray):
    """Erode until the lung mask falls into two large parts; those are the seeds."""
    current = lungs
    for iteration in range(0, 12):
        if iteration:
            current = ndimage.binary_erosion(current, iterations=1)
        components = cc3d.connected_components(current, connectivity=6)
        counts = component_sizes(components)
        if (counts > 0).sum() < 2:
            if not current.any():
                return None, ""
            continue
        first, second = np.argsort(counts)[::-1][:2]
        if counts[second] >= 0.2 * counts[first]:
            seeds = np.zeros(lungs.shape, np.uint8)
            seeds[components == first] = 1
            seeds[components == second] = 2
            note = f"lungs separated after {iteration} erosion(s)" if iteration else ""
            return seeds, note
    return None, ""


def _patient_x(volume, x_index: np.ndarray) -> np.ndarray:
    return volume.origin_xyz[0] + volume.direction[0, 0] * x_index * volume.spacing_zyx[2]


def fill_lung_holes(labels: np.ndarray) -> np.ndarray:
    """Each lung's holes filled, in 3D and then in every slice: vessels, airways and dense parenchyma
    enclosed by that lung. Nothing outside a lung's outline is added. The per-slice pass matters where
    dense lung reaches the first or last slice of the scan, which no 3D fill can close."""
    out = labels.copy()
    for lung, box, sub in _each_lung_hole_filled(labels):
        for z in range(sub.shape[0]):
            sub[z] = fill_voids.fill(sub[z], in_place=False)
        region = out[box]
        region[sub & (region == 0)] = lung
    return out


def _each_lung_hole_filled(labels: np.ndarray):
    """For each lung present: its code, its bounding box, and its mask in that box with 3D holes filled."""
    for lung in (RIGHT_LUNG, LEFT_LUNG):
        mask = labels == lung
        if not mask.any():
            continue
        z0, z1, y0, y1, x0, x1 = _bbox(mask, pad=0)
        box = (slice(z0, z1), slice(y0, y1), slice(x0, x1))
        yield lung, box, fill_voids.fill(mask[box], in_place=False)


def fill_pleural_lesions(labels: np.ndarray, hu: np.ndarray, body: np.ndarray, volume) -> np.ndarray:
    """Fill vessels, airways inside the lung and dense lesions at the pleura.

    Per lung: a 3D hole fill (vessels and central lesions), then in every slice a
    closing with a disk of 20 mm, keeping only voxels inside the body and below
    bone density. The closing is done with two Euclidean distance transforms
    (dilate: distance to the lung <= r; erode: distance to the outside > r),
    which is exact in mm and much faster than a 50-pixel structuring element.
    """
    out = labels.copy()
    sy, sx = volume.spacing_zyx[1], volume.spacing_zyx[2]
    pad = int(np.ceil(PLEURA_CLOSING_MM / min(sy, sx))) + 2
    for lung, box, sub in _each_lung_hole_filled(labels):
        closed = np.zeros_like(sub)
        for z in range(sub.shape[0]):
            if sub[z].any():
                closed[z] = _close_slice(sub[z], PLEURA_CLOSING_MM, (sy, sx), pad)
        allowed = body[box] & (hu[box] < BONE_HU)
        region = out[box]
        add = (sub | (closed & allowed)) & (region == 0)
        region[add] = lung
    return out


def _close_slice(mask2d: np.ndarray, radius_mm: float, sampling: tuple[float, float], pad: int) -> np.ndarray:
    padded = np.pad(mask2d, pad)
    dilated = ndimage.distance_transform_edt(~padded, sampling=sampling) <= radius_mm
    closed = ndimage.distance_transform_edt(dilated, sampling=sampling) > radius_mm
    closed = ndimage.binary_fill_holes(closed)
    return closed[pad:-pad, pad:-pad] | mask2d


def _bbox(mask: np.ndarray, pad: int) -> tuple[int, int, int, int, int, int]:
    zs, ys, xs = (np.flatnonzero(mask.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    return (
        int(zs[0]), int(zs[-1]) + 1,
        max(0, int(ys[0]) - pad), min(mask.shape[1], int(ys[-1]) + 1 + pad),
        max(0, int(xs[0]) - pad), min(mask.shape[2], int(xs[-1]) + 1 + pad),
    )
