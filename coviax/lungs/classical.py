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

from types import SimpleNamespace

import cc3d
import edt
import fastremap
import fill_voids
import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

from coviax.labels import LEFT_LUNG, RIGHT_LUNG
from coviax.lungs.grid import coarse_step, to_coarse, to_fine

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
    step = coarse_step(volume.spacing_zyx, hu.shape)
    coarse_hu = to_coarse(hu, step)
    body = body_mask(coarse_hu)
    lungs = _largest_air_components((coarse_hu < AIR_HU) & body, volume.voxel_volume_ml * float(np.prod(step)))
    if not lungs.any():
        return LungMask(labels=np.zeros(hu.shape, np.uint8), method="classical", notes=["no lungs found"])
    coarse_grid = SimpleNamespace(spacing_zyx=tuple(float(s) * k for s, k in zip(volume.spacing_zyx, step)),
                                  superior_axis_sign=volume.superior_axis_sign)
    airways = trace_airways(coarse_hu, lungs, coarse_grid)
    lungs &= ~airways
    if step != (1, 1, 1):
        lungs, body = _outline_at_full_resolution(hu, lungs, airways, body, step)
    labels, split_note = split_left_right(lungs, volume)
    if split_note:
        notes.append(split_note)
    if close_pleura:
        labels = fill_pleural_lesions(labels, hu, body, volume)
        return LungMask(labels=labels, method="classical", notes=notes)
    return LungMask(labels=fill_lung_holes(labels), method="classical-unclosed", notes=notes)


def _outline_at_full_resolution(hu, lungs, airways, body, step):
    """The coarse lungs' outline found again on the scan's own grid: every voxel below AIR_HU within
    one coarse voxel of the coarse lungs and not in the traced airways. Returns the lungs and the body."""
    near = to_fine(ndimage.binary_dilation(lungs), step, hu.shape)
    near &= ~to_fine(airways, step, hu.shape)
    near &= hu < AIR_HU
    return near, to_fine(body, step, hu.shape)


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
    """Voxels per component id (index 0 = background set to 0). fastremap counts in one pass without the
    int64 copy of the volume ``np.bincount`` makes (1 GiB for 500 slices) and 5x faster than
    ``cc3d.statistics``, which also computes boxes and centroids we do not use."""
    ids, counts = fastremap.unique(components, return_counts=True)
    sizes = np.zeros(int(ids.max()) + 1 if ids.size else 1, dtype=np.int64)
    sizes[ids] = counts
    sizes[0] = 0
    return sizes


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
    """Label right (1) and left (2) lung; returns the labels and a note if a fallback was used.

    The cut is found on the coarse grid (:mod:`coviax.lungs.grid`): it is where the lungs meet at the
    anterior and posterior junction lines, and a watershed at full resolution took 7 s of a 505-slice scan.
    """
    labels = np.zeros(lungs.shape, np.uint8)
    # Work inside the lungs' bounding box: the watershed's arrays are int32/int64 per voxel.
    z0, z1, y0, y1, x0, x1 = _bbox(lungs, pad=1)
    box = (slice(z0, z1), slice(y0, y1), slice(x0, x1))
    step = coarse_step(volume.spacing_zyx, lungs.shape)
    crop = lungs[box]
    coarse, note = _split_crop(to_coarse(crop, step), volume, np.array([z0, y0, x0], np.float64), step)
    labels[box] = _labels_on_full_grid(crop, coarse, step)
    return labels, note


def _split_crop(lungs: np.ndarray, volume, offset: np.ndarray, step) -> tuple[np.ndarray, str]:
    labels = np.zeros(lungs.shape, np.uint8)
    scale = np.asarray(step, np.float64)
    seeds, note = _two_seeds(lungs)
    if seeds is None:
        # One lung-shaped blob that no erosion splits: cut at the body's midline.
        zz, yy, xx = np.nonzero(lungs)
        xx_full = xx * scale[2] + offset[2]
        mid_x = float(np.median(xx_full))
        right_side = _patient_x(volume, xx_full) < _patient_x(volume, np.array([mid_x]))[0]
        labels[zz[right_side], yy[right_side], xx[right_side]] = RIGHT_LUNG
        labels[zz[~right_side], yy[~right_side], xx[~right_side]] = LEFT_LUNG
        return labels, "lungs could not be separated by erosion; split at the midline"
    grown = watershed(np.zeros(lungs.shape, np.uint8), markers=seeds, mask=lungs)
    centroids = ndimage.center_of_mass(lungs, grown, [1, 2])
    x_patient = [volume.index_to_patient(np.asarray(c) * scale + offset)[0] for c in centroids]
    # LPS: +x is patient left. The component with the smaller x is the right lung.
    right_id = 1 if x_patient[0] < x_patient[1] else 2
    labels[grown == right_id] = RIGHT_LUNG
    labels[(grown > 0) & (grown != right_id)] = LEFT_LUNG
    return labels, note


def _labels_on_full_grid(lungs: np.ndarray, coarse: np.ndarray, step) -> np.ndarray:
    """The coarse right/left labels carried onto every voxel of ``lungs`` (full grid).

    Lung voxels between coarse samples take the label of a coarse neighbour (two rounds of a 3x3x3
    maximum over unlabelled coarse voxels); the few thin parts still unlabelled then take the side
    of the nearer lung's mean x.
    """
    if step == (1, 1, 1):
        return np.where(lungs, coarse, 0).astype(np.uint8)
    grown = coarse.copy()
    for _ in range(2):
        empty = grown == 0
        grown[empty] = ndimage.maximum_filter(grown, size=3)[empty]
    labels = np.where(lungs, to_fine(grown, step, lungs.shape), 0).astype(np.uint8)
    orphans = lungs & (labels == 0)
    if orphans.any():
        xs = np.arange(lungs.shape[2])
        mean_x = [float((np.count_nonzero(labels == code, axis=(0, 1)) * xs).sum()
                        / max(1, np.count_nonzero(labels == code))) for code in (RIGHT_LUNG, LEFT_LUNG)]
        orphan_x = np.nonzero(orphans)[2]
        labels[orphans] = np.where(np.abs(orphan_x - mean_x[0]) <= np.abs(orphan_x - mean_x[1]), RIGHT_LUNG, LEFT_LUNG)
    return labels


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
    """Each lung's holes filled in 3D: vessels, airways and dense parenchyma enclosed by that lung.
    Nothing outside a lung's outline is added.

    Where a lung reaches the first or last slice of the scan, the scan cuts it open there and no 3D
    fill could close a dense region at that cut; a lid (that end slice with its holes filled) is put
    on the cut first. There is no per-slice fill elsewhere: in an axial slice the dome of the
    diaphragm (liver, spleen) and the heart's apex are cut tangentially and look like soft tissue
    enclosed by lung, but in 3D they are open to the abdomen and mediastinum, so they stay outside."""
    out = labels.copy()
    n_slices = labels.shape[0]
    for lung in (RIGHT_LUNG, LEFT_LUNG):
        mask = labels == lung
        if not mask.any():
            continue
        z0, z1, y0, y1, x0, x1 = _bbox(mask, pad=0)
        box = (slice(z0, z1), slice(y0, y1), slice(x0, x1))
        sub = mask[box]
        lids = (int(z0 == 0), int(z1 == n_slices))
        if any(lids):
            top = fill_voids.fill(sub[0], in_place=False)[None] if lids[0] else sub[:0]
            bottom = fill_voids.fill(sub[-1], in_place=False)[None] if lids[1] else sub[:0]
            sub = np.concatenate([top, sub, bottom])
        filled = fill_voids.fill(sub, in_place=False)[lids[0] : len(sub) - lids[1]]
        region = out[box]
        region[filled & (region == 0)] = lung
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
    # edt (from the cc3d authors) gives the same distances as scipy's distance_transform_edt in a third
    # of the time; the slice is cut to this lung's extent in it first.
    ys, xs = np.flatnonzero(mask2d.any(axis=1)), np.flatnonzero(mask2d.any(axis=0))
    box = (slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
    padded = np.pad(mask2d[box], pad)
    dilated = edt.edt(~padded, anisotropy=sampling, black_border=False) <= radius_mm
    closed = edt.edt(dilated, anisotropy=sampling, black_border=False) > radius_mm
    closed = fill_voids.fill(closed, in_place=True)
    out = mask2d.copy()
    out[box] |= closed[pad:-pad, pad:-pad]
    return out


def _bbox(mask: np.ndarray, pad: int) -> tuple[int, int, int, int, int, int]:
    zs, ys, xs = (np.flatnonzero(mask.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    return (
        int(zs[0]), int(zs[-1]) + 1,
        max(0, int(ys[0]) - pad), min(mask.shape[1], int(ys[-1]) + 1 + pad),
        max(0, int(xs[0]) - pad), min(mask.shape[2], int(xs[-1]) + 1 + pad),
    )
