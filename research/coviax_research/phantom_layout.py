"""Where a phantom's lesions go and what they look like inside (steps 1 and 3-7 of
:mod:`coviax_research.phantom`): the grid (z resampling, in-plane down-sampling, right-handed axes),
the lesion layout on a coarse grid, the texture, air bronchograms and the correlated noise."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from coviax.io import HU_MAX, HU_MIN, Volume
from coviax.labels import LEFT_LUNG, RIGHT_LUNG

#: Targets are drawn in these inner ranges so that the recounted fraction lands in the nominal one.
_TARGET_RANGES = {
    "mild": (0.03, 0.07),
    "moderate": (0.12, 0.23),
    "severe": (0.28, 0.46),
    "critical": (0.56, 0.78),
}
#: Share of the lesion volume that is consolidation.
_CONSOLIDATION_SHARE = {"mild": (0.0, 0.10), "moderate": (0.08, 0.20), "severe": (0.15, 0.30), "critical": (0.25, 0.40)}
_BLOB_COUNT = {"mild": (2, 5), "moderate": (4, 8), "severe": (6, 12), "critical": (8, 16)}
_BLOB_RADIUS_MM = {"mild": 14.0, "moderate": 20.0, "severe": 26.0, "critical": 32.0}

COARSE_MM = 3.0
TEXTURE_SIGMA_MM = 0.9
NOISE_SIGMA_PX = 1.0
_CHUNK = 2_000_000


def resample_z(hu: np.ndarray, lung_labels: np.ndarray, spacing_z: float, new_spacing_z: float):
    """Linear resampling of HU (nearest for the lung mask) along z, first to last slice centre.

    Returns ``(hu, lung_labels, z_scale)`` where new slice ``k`` lies at source
    slice index ``k * z_scale``.
    """
    n = hu.shape[0]
    z_scale = new_spacing_z / spacing_z
    n_new = int(math.floor((n - 1) / z_scale + 1e-6)) + 1
    out = np.empty((n_new,) + hu.shape[1:], np.int16)
    lab = np.empty((n_new,) + hu.shape[1:], np.uint8)
    for k in range(n_new):
        z = k * z_scale
        i0 = min(int(math.floor(z)), n - 1)
        f = z - i0
        if f < 1e-6 or i0 == n - 1:
            out[k] = hu[i0]
        else:
            out[k] = np.rint(hu[i0].astype(np.float32) * (1.0 - f) + hu[i0 + 1].astype(np.float32) * f)
        lab[k] = lung_labels[min(int(math.floor(z + 0.5)), n - 1)]
    return out, lab, z_scale


def downsample_volume(volume: Volume, factor: int) -> Volume:
    """Mean of ``factor`` x ``factor`` pixel blocks in-plane (slices kept); geometry follows."""
    f = int(factor)
    if f <= 1:
        return volume
    n, h, w = volume.shape
    h2, w2 = h // f, w // f
    blocks = volume.hu[:, : h2 * f, : w2 * f].astype(np.float32).reshape(n, h2, f, w2, f)
    hu = np.rint(blocks.mean(axis=(2, 4))).astype(np.int16)
    origin = volume.index_to_patient([0.0, (f - 1) / 2.0, (f - 1) / 2.0])
    sz, sy, sx = volume.spacing_zyx
    return Volume(hu=hu, spacing_zyx=(sz, sy * f, sx * f), origin_xyz=tuple(float(v) for v in origin),
                  direction=volume.direction.copy(), source_format=volume.source_format,
                  source_path=volume.source_path)


def _right_handed(source: Volume, lung_labels: np.ndarray) -> tuple[Volume, np.ndarray]:
    """Flip z when the volume's z axis runs against the slice normal, so DICOM read-back keeps the order."""
    d = source.direction
    if float(np.dot(np.cross(d[:, 0], d[:, 1]), d[:, 2])) >= 0:
        return source, lung_labels
    origin = source.index_to_patient([source.shape[0] - 1, 0, 0])
    direction = d.copy()
    direction[:, 2] = -direction[:, 2]
    flipped = Volume(hu=np.ascontiguousarray(source.hu[::-1]), spacing_zyx=source.spacing_zyx,
                     origin_xyz=tuple(float(v) for v in origin), direction=direction,
                     source_format=source.source_format, source_path=source.source_path)
    return flipped, np.ascontiguousarray(lung_labels[::-1])


def _nonzero32(mask: np.ndarray, slab: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """np.nonzero as int32 arrays, slab by slab (a third of the memory of int64 indices)."""
    parts = []
    for z0 in range(0, mask.shape[0], slab):
        z, y, x = np.nonzero(mask[z0 : z0 + slab])
        parts.append(((z + z0).astype(np.int32), y.astype(np.int32), x.astype(np.int32)))
    if not parts:
        empty = np.zeros(0, np.int32)
        return empty, empty, empty
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]


def _sample(field: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Trilinear samples of a coarse field at (3, n) coordinates, in chunks."""
    out = np.empty(coords.shape[1], np.float32)
    for start in range(0, coords.shape[1], _CHUNK):
        part = coords[:, start : start + _CHUNK]
        out[start : start + _CHUNK] = ndimage.map_coordinates(field, part, order=1, mode="nearest", prefilter=False)
    return out


@dataclass
class _Layout:
    s: np.ndarray  # lesion score on the coarse grid
    c: np.ndarray  # consolidation score
    g: np.ndarray  # GGO level field (unit std)
    k: np.ndarray  # consolidation level field (unit std)
    origin: tuple[int, int, int]  # source index of coarse cell (0, 0, 0)
    stride: tuple[int, int, int]
    info: dict

    def coarse_coords(self, zc, yc, xc, z_scale: float) -> np.ndarray:
        coords = np.empty((3, len(zc)), np.float32)
        coords[0] = (zc.astype(np.float32) * np.float32(z_scale) - self.origin[0]) / self.stride[0]
        coords[1] = (yc.astype(np.float32) - self.origin[1]) / self.stride[1]
        coords[2] = (xc.astype(np.float32) - self.origin[2]) / self.stride[2]
        return coords


def _smooth_field(rng: np.random.Generator, shape, sigma_mm: float, spacing) -> np.ndarray:
    noise = rng.standard_normal(shape, dtype=np.float32)
    field = ndimage.gaussian_filter(noise, sigma=[sigma_mm / s for s in spacing], mode="reflect")
    std = float(field.std())
    return field / std if std > 0 else field


def _layout(source: Volume, lung_labels: np.ndarray, severity: str, rng: np.random.Generator) -> _Layout:
    """Step 3: the lesion score ``S`` and consolidation score ``C`` on a coarse grid of the source,
    with the smooth level fields of GGO and consolidation. The draws from ``rng`` come in a fixed
    order (targets, blob count, sides, blobs, fields), so a seed gives the same layout."""
    sp = np.asarray(source.spacing_zyx, dtype=np.float64)
    stride = tuple(max(1, int(round(COARSE_MM / s))) for s in sp)
    lo, hi = _coarse_box(lung_labels > 0, stride)
    box = tuple(slice(lo[a], hi[a], stride[a]) for a in range(3))
    lab_c = lung_labels[box]
    cs = sp * np.asarray(stride)
    prior, posterior = _priors(source, lab_c > 0, lo, hi, stride, sp, cs)

    low, high = _TARGET_RANGES[severity]
    target = low + (high - low) * float(rng.random())
    c_low, c_high = _CONSOLIDATION_SHARE[severity]
    share = c_low + (c_high - c_low) * float(rng.random())
    n_low, n_high = _BLOB_COUNT[severity]
    n_blobs = int(rng.integers(n_low, n_high + 1))
    blobs, unilateral = _blobs(lab_c, prior, cs, severity, n_blobs, rng)

    shape = lab_c.shape
    fine = _smooth_field(rng, shape, 6.0, cs)
    broad = _smooth_field(rng, shape, 15.0, cs)
    field = 0.5 * fine + 0.8 * broad
    field /= max(float(field.std()), 1e-6)
    cons_field = _smooth_field(rng, shape, 10.0, cs)
    g = _smooth_field(rng, shape, 20.0, cs)
    k = _smooth_field(rng, shape, 20.0, cs)
    s = (blobs + 0.35 * field + 0.45 * prior).astype(np.float32)
    c = (s + 0.25 * posterior + 0.3 * cons_field).astype(np.float32)
    info = {"target_lesion_fraction": round(target, 5), "target_consolidation_share": round(share, 5),
            "lesion_seeds": n_blobs, "unilateral": bool(unilateral)}
    return _Layout(s=s, c=c, g=g, k=k, origin=(lo[0], lo[1], lo[2]), stride=stride, info=info)  # type: ignore[arg-type]


def _coarse_box(cavity: np.ndarray, stride) -> tuple[list[int], list[int]]:
    """(low, high) source index per axis of the lungs' box, padded by two coarse cells."""
    lo, hi = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        nz = np.flatnonzero(cavity.any(axis=other))
        pad = 2 * stride[axis]
        lo.append(max(0, int(nz[0]) - pad))
        hi.append(min(cavity.shape[axis], int(nz[-1]) + 1 + pad))
    return lo, hi


def _priors(source: Volume, cav_c: np.ndarray, lo, hi, stride, sp, cs) -> tuple[np.ndarray, np.ndarray]:
    """(prior, posterior) on the coarse grid: prior = 0.55 subpleural + 0.35 posterior (dependent)
    + 0.10 basal, each in [0, 1] over the lungs."""
    shape = cav_c.shape
    dist = ndimage.distance_transform_edt(cav_c, sampling=cs)
    idx = [np.arange(lo[a], hi[a], stride[a], dtype=np.float64) * sp[a] for a in range(3)]  # z, y, x mm
    d = source.direction

    def patient(row: int) -> np.ndarray:
        return (source.origin_xyz[row] + d[row, 0] * idx[2][None, None, :] + d[row, 1] * idx[1][None, :, None]
                + d[row, 2] * idx[0][:, None, None])

    def normalised(values: np.ndarray) -> np.ndarray:
        values = np.broadcast_to(values, shape)
        inside = values[cav_c]
        vmin, vmax = float(inside.min()), float(inside.max())
        return np.clip((values - vmin) / max(vmax - vmin, 1e-6), 0, 1)

    posterior = normalised(patient(1))  # LPS: +y is posterior (dependent when supine)
    basal = 1.0 - normalised(patient(2))  # LPS: +z is superior
    subpleural = np.exp(-dist / 12.0)
    prior = (0.55 * subpleural + 0.35 * posterior + 0.10 * basal).astype(np.float32)
    return prior, posterior


def _blobs(lab_c: np.ndarray, prior: np.ndarray, cs, severity: str, n_blobs: int,
           rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """(the maximum of ``n_blobs`` rotated Gaussian ellipsoids, unilateral): centres drawn with
    probability ``prior**3``, alternately in the right and left lung (mild: sometimes one lung only)."""
    shape = lab_c.shape
    sides = [s for s in (RIGHT_LUNG, LEFT_LUNG) if (lab_c == s).any()]
    first = int(rng.integers(len(sides)))
    unilateral = severity == "mild" and rng.random() < 0.35
    zz, yy, xx = np.meshgrid(*(np.arange(n) * cs[a] for a, n in enumerate(shape)), indexing="ij", sparse=True)
    blobs = np.zeros(shape, np.float32)
    for b in range(n_blobs):
        side = sides[first] if unilateral else sides[(first + b) % len(sides)]
        candidates = np.flatnonzero((lab_c == side).ravel())
        weights = prior.ravel()[candidates].astype(np.float64) ** 3
        pick = candidates[int(rng.choice(len(candidates), p=weights / weights.sum()))]
        centre = np.array(np.unravel_index(pick, shape), dtype=np.float64) * cs
        radius = _BLOB_RADIUS_MM[severity] * float(np.exp(0.35 * rng.standard_normal()))
        axes = radius * rng.uniform(0.7, 1.3, size=3)
        rotation, _ = np.linalg.qr(rng.standard_normal((3, 3)))
        amp = float(rng.uniform(0.6, 1.0))
        dz, dy, dx = zz - centre[0], yy - centre[1], xx - centre[2]
        q = np.zeros(shape, np.float32)
        for j in range(3):
            u = rotation[0, j] * dz + rotation[1, j] * dy + rotation[2, j] * dx
            q += (u / axes[j]) ** 2
        np.maximum(blobs, amp * np.exp(-0.5 * q), out=blobs)
    return blobs, unilateral


def _texture_at(cavity: np.ndarray, index, spacing, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance texture (white noise smoothed with a 0.9 mm Gaussian) at the lung voxels."""
    zc, yc, xc = index
    box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in (zc, yc, xc))
    shape = tuple(s.stop - s.start for s in box)
    sigma = [TEXTURE_SIGMA_MM / s for s in spacing]
    noise = rng.standard_normal(shape, dtype=np.float32)
    smooth = ndimage.gaussian_filter(noise, sigma=sigma, mode="reflect", truncate=3.0)
    del noise
    values = smooth[zc - box[0].start, yc - box[1].start, xc - box[2].start]
    return values / np.float32(_gaussian_noise_std(sigma, truncate=3.0))


def _gaussian_noise_std(sigma, truncate: float = 4.0) -> float:
    """Standard deviation of unit white noise after ndimage.gaussian_filter with ``sigma`` per axis."""
    var = 1.0
    for s in sigma:
        if s <= 0:
            continue
        delta = np.zeros(int(2 * math.ceil(truncate * s + 1) + 1), np.float64)
        delta[len(delta) // 2] = 1.0
        kernel = ndimage.gaussian_filter1d(delta, s, truncate=truncate, mode="constant")
        var *= float((kernel**2).sum())
    return math.sqrt(var)


def _air_bronchograms(cons: np.ndarray, index, spacing, rng: np.random.Generator):
    """Straight air tubes inside consolidation; returns (mask over the lung voxels, count)."""
    tube = np.zeros(cons.shape, bool)
    n_cons = int(cons.sum())
    voxel_ml = float(np.prod(spacing)) / 1000.0
    cons_ml = n_cons * voxel_ml
    if cons_ml < 2.0:
        return tube, 0
    where = np.flatnonzero(cons)
    pts = np.stack([index[a][where] for a in range(3)], axis=1).astype(np.float32) * np.asarray(spacing, np.float32)
    n_tubes = min(40, 1 + int(cons_ml / 10.0))
    for _ in range(n_tubes):
        middle = pts[int(rng.integers(len(pts)))]
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        length = float(rng.uniform(10.0, 35.0))
        radius = float(rng.uniform(0.9, 1.8))
        a = middle - 0.5 * length * direction
        b = middle + 0.5 * length * direction
        low, high = np.minimum(a, b) - radius, np.maximum(a, b) + radius
        near = np.flatnonzero(np.all((pts >= low) & (pts <= high), axis=1))
        p = pts[near] - a.astype(np.float32)
        t = np.clip(p @ direction.astype(np.float32) / length, 0.0, 1.0)
        dist = np.linalg.norm(p - t[:, None] * (length * direction).astype(np.float32), axis=1)
        tube[where[near[dist <= radius]]] = True
    return tube, n_tubes


def add_correlated_noise(hu: np.ndarray, sigma_hu: float, rng: np.random.Generator, slab: int = 16) -> None:
    """Add in-plane correlated Gaussian noise of standard deviation ``sigma_hu`` to ``hu`` in place."""
    sigma = (0.0, NOISE_SIGMA_PX, NOISE_SIGMA_PX)
    scale = np.float32(sigma_hu / _gaussian_noise_std(sigma, truncate=3.0))
    for z0 in range(0, hu.shape[0], slab):
        part = hu[z0 : z0 + slab]
        noise = rng.standard_normal(part.shape, dtype=np.float32)
        noise = ndimage.gaussian_filter(noise, sigma=sigma, mode="reflect", truncate=3.0)
        noise *= scale
        noise += part
        np.rint(noise, out=noise)
        np.clip(noise, HU_MIN, HU_MAX, out=noise)
        part[...] = noise.astype(np.int16)
