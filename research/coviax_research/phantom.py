"""Hybrid phantoms: synthetic COVID-19 lesions inserted into a real chest CT, with exact labels.

A phantom keeps everything of the real scan (anatomy, vessels, scanner noise
and kernel) and adds ground-glass opacities (GGO) and consolidations whose
extent is known voxel by voxel, so engines can be scored against a truth that
no labelled patient data here could give. Research software, not a medical
device: the phantoms are a test bench, not patients.

How a phantom is made (:func:`make_phantom`)
--------------------------------------------

1. Lungs: ``segment_lungs(source, "classical")`` unless a :class:`LungMask` is
   given. This mask *is* the true lung of the phantom (its cavity is the
   denominator of every true ratio).
2. Optional thin slices (``slice_thickness_mm``): the source HU are resampled
   along z with linear interpolation, the lung mask with nearest neighbour,
   from the first to the last slice centre; lesions are then inserted at the
   new resolution, so labels stay exact.
3. Layout, on a coarse grid (about 3 mm, one cell per source slice along z)
   of the *source* geometry, so a seed gives the same lesions in physical
   space at any slice thickness. A lesion score
   ``S = blobs + 0.35 F + 0.45 prior`` is built from

   * ``blobs``: 2-16 randomly rotated Gaussian ellipsoids (radii of about
     10-50 mm), centred in lung voxels drawn with probability proportional
     to ``prior**3``, alternately in the right and left lung (a mild case is
     unilateral with probability 0.35);
   * ``F``: a smoothed random field (6 and 15 mm correlation), which makes
     the outlines patchy and adds satellite foci;
   * ``prior`` in [0, 1]: 0.55 subpleural (``exp(-d / 12 mm)``, ``d`` the
     distance to the lung border) + 0.35 posterior (dependent, supine) + 0.10
     basal.

   A consolidation score ``C = S + 0.25 posterior + 0.3 F'`` puts the
   consolidated cores of lesions posteriorly (dependent).
4. Thresholds: ``t`` is the quantile of ``S`` over the lung voxels that makes
   the target lesion fraction (drawn per seed inside the severity's range,
   then corrected once for the voxels vessels keep); ``tc`` the quantile of
   ``C`` over lesion voxels that gives the target consolidation share.
5. Soft edges: lesion weight ``w = clip((S - t) / 0.08 + 0.5, 0, 1)``
   (partial volume over ~2-4 mm) and consolidation weight
   ``wc = clip((C - tc) / 0.05 + 0.5, 0, 1)``.
6. HU: lesion HU ``L = (1 - wc) L_ggo + wc L_cons`` with
   ``L_ggo`` = a smooth level in [-720, -430] + 35 HU texture and
   ``L_cons`` = a level in [-60, +45] + 12 HU texture (texture: white noise
   smoothed with a 0.9 mm Gaussian). The voxel becomes
   ``source + w * max(L - source, 0)``: parenchyma is blended towards the
   lesion, a vessel denser than the lesion stays as it was (vessels stay
   visible through GGO).
7. Air bronchograms: in consolidations of more than 2 mL, straight tubes
   (10-35 mm long, 0.9-1.8 mm radius) of air (-930 HU) are kept.

Label rule (the truth)
----------------------
Outside the lung mask: ``BACKGROUND``. Inside, a voxel is

* a lesion if ``w >= 0.5``, unless it is a source vessel voxel (source HU
  > ``VESSEL_HU`` = -500) at least as dense as the lesion HU ``L`` (then
  ``VESSEL``) or an air-bronchogram voxel (then ``HEALTHY_LUNG``); the lesion
  is ``CONSOLIDATION`` if ``wc >= 0.5``, else ``GGO``;
* otherwise ``VESSEL`` if the source HU > -500, else ``HEALTHY_LUNG``.

So a source voxel above -500 HU inside the lung is a vessel: partial volume
around vessels, bronchial walls and whatever else is dense in the source lung
(a nodule, a scar) all count as vessel, with no lesion.

Low-dose noise (``noise_sigma_hu``) is white noise smoothed in-plane with a
Gaussian of 1 pixel (CT noise is correlated by the reconstruction kernel),
scaled to the asked standard deviation, and added to the whole volume after
the lesions; labels do not change with noise. Every random draw comes from
``numpy.random.default_rng([seed, stream])`` (layout, texture, noise are
separate streams), so a seed gives the same lesions with or without noise.

Seeds: :data:`EVAL_SEEDS` (1000-1099) are reserved for ``coviax eval``;
training uses :data:`TRAIN_SEED_RANGE` (0-999) only.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import cc3d
import numpy as np
from scipy import ndimage

from coviax.errors import OptionError
from coviax.labels import LEFT_LUNG, RIGHT_LUNG, Label
from coviax.lungs import LungMask
from coviax.io import HU_MAX, HU_MIN, Volume

#: Bumped whenever the same inputs would give a different phantom (cache keys use it).
GENERATOR_VERSION = "1"

SEVERITIES = ("none", "mild", "moderate", "severe", "critical")

#: Nominal lesion fraction of the lung (GGO + consolidation) per severity, [low, high).
SEVERITY_RANGES: dict[str, tuple[float, float]] = {
    "none": (0.0, 0.0),
    "mild": (0.02, 0.08),
    "moderate": (0.10, 0.25),
    "severe": (0.25, 0.50),
    "critical": (0.50, 0.85),
}
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

#: Evaluation seeds (``coviax eval``); never train on them.
EVAL_SEEDS: tuple[int, ...] = tuple(range(1000, 1100))
#: Seeds the trainer may use.
TRAIN_SEED_RANGE = range(0, 1000)

VESSEL_HU = -500.0
GGO_LEVEL_HU = (-590.0, 80.0, -720.0, -430.0)  # mean, spread, clip low, clip high
GGO_TEXTURE_HU = 35.0
CONSOLIDATION_LEVEL_HU = (10.0, 20.0, -60.0, 45.0)
CONSOLIDATION_TEXTURE_HU = 12.0
AIR_BRONCHOGRAM_HU = -930.0
LESION_EDGE = 0.08  # width of the lesion weight ramp, in units of S
CONSOLIDATION_EDGE = 0.05
COARSE_MM = 3.0
TEXTURE_SIGMA_MM = 0.9
NOISE_SIGMA_PX = 1.0

_STREAM_LAYOUT, _STREAM_TEXTURE, _STREAM_NOISE = 0, 1, 2
_CHUNK = 2_000_000


@dataclass
class Phantom:
    """A hybrid phantom: CT volume with inserted lesions and its exact labels.

    Attributes
    ----------
    volume:
        the phantom CT (int16 HU) with the source geometry (z spacing changed
        when resampled to thin slices).
    labels:
        uint8 (z y x) true labels with the codes of :class:`coviax.labels.Label`.
    lungs:
        the true lung mask (1 right, 2 left).
    truth:
        JSON-ready dict: true volumes (mL) per class, lung volumes, ratios in
        percent, seed, severity, noise, slice thickness, source fingerprint and
        generator version (see :func:`make_phantom`).
    """

    volume: Volume
    labels: np.ndarray
    lungs: LungMask
    truth: dict


def make_phantom(
    source: Volume,
    seed: int,
    severity: str,
    noise_sigma_hu: float = 0.0,
    slice_thickness_mm: float | None = None,
    lungs: LungMask | None = None,
) -> Phantom:
    """Insert synthetic lesions of ``severity`` into ``source``; see the module docstring.

    Parameters
    ----------
    source:
        a real chest CT (int16 HU).
    seed:
        non-negative integer; the phantom is a deterministic function of
        (source, seed, severity, noise_sigma_hu, slice_thickness_mm, lungs).
    severity:
        one of :data:`SEVERITIES`; ``none`` inserts nothing.
    noise_sigma_hu:
        standard deviation of the added correlated noise (0 = none).
    slice_thickness_mm:
        resample to this slice spacing first (e.g. 0.625-1.25 mm); None keeps
        the source slices.
    lungs:
        the lung mask of ``source`` (at the source resolution); default the
        classical method's.

    Raises
    ------
    OptionError
        for an unknown severity, a negative seed or noise, a non-positive
        slice thickness, or a lung mask of the wrong shape or empty.
    """
    seed = _checked_seed(seed, severity, noise_sigma_hu, slice_thickness_mm)
    lungs = _source_lungs(source, lungs)
    source_sha = hashlib.sha256(np.ascontiguousarray(source.hu).tobytes()).hexdigest()
    source, src_lungs = _right_handed(source, lungs.labels)
    hu, lung_labels, z_scale, spacing = _target_grid(source, src_lungs, slice_thickness_mm)

    rng_layout = np.random.default_rng([seed, _STREAM_LAYOUT])
    rng_texture = np.random.default_rng([seed, _STREAM_TEXTURE])
    info: dict = {"target_lesion_fraction": 0.0, "target_consolidation_share": 0.0, "lesion_seeds": 0,
                  "air_bronchograms": 0}
    cavity = lung_labels > 0
    labels = np.zeros(hu.shape, np.uint8)
    zc, yc, xc = _nonzero32(cavity)
    src_vals = hu[zc, yc, xc].astype(np.float32)
    if severity == "none":
        lab = np.where(src_vals > VESSEL_HU, np.uint8(Label.VESSEL), np.uint8(Label.HEALTHY_LUNG))
        labels[zc, yc, xc] = lab
    else:
        layout = _layout(source, src_lungs, severity, rng_layout)
        info.update(layout.info)
        lab, out = _lesions(layout, cavity, (zc, yc, xc), src_vals, spacing, z_scale, rng_texture, info)
        labels[zc, yc, xc] = lab
        hu[zc, yc, xc] = np.clip(np.rint(out), HU_MIN, HU_MAX).astype(np.int16)
        del lab, out
    del zc, yc, xc, src_vals

    if noise_sigma_hu > 0:
        add_correlated_noise(hu, noise_sigma_hu, np.random.default_rng([seed, _STREAM_NOISE]))

    volume = Volume(
        hu=hu, spacing_zyx=spacing, origin_xyz=tuple(float(o) for o in source.origin_xyz),
        direction=source.direction.copy(), series_uid=None, source_format="phantom", source_path="",
    )
    true_lungs = LungMask(labels=lung_labels, method="phantom-truth",
                          notes=[f"true lung of the phantom: {lungs.method} mask of the source"])
    truth = _truth(labels, lung_labels, volume, seed, severity, noise_sigma_hu, slice_thickness_mm, info,
                   source, source_sha, lungs.method)
    return Phantom(volume=volume, labels=labels, lungs=true_lungs, truth=truth)


def _checked_seed(seed, severity: str, noise_sigma_hu: float, slice_thickness_mm: float | None) -> int:
    """The seed as an int, after checking the arguments of :func:`make_phantom` (OptionError if wrong)."""
    if severity not in SEVERITIES:
        raise OptionError(f"unknown severity {severity!r}; choose one of {', '.join(SEVERITIES)}")
    if int(seed) != seed or seed < 0:
        raise OptionError(f"phantom seed must be a non-negative integer, got {seed!r}")
    if not noise_sigma_hu >= 0 or not math.isfinite(noise_sigma_hu):
        raise OptionError(f"noise sigma must be >= 0 HU, got {noise_sigma_hu}")
    if slice_thickness_mm is not None and not (slice_thickness_mm > 0 and math.isfinite(slice_thickness_mm)):
        raise OptionError(f"slice thickness must be > 0 mm, got {slice_thickness_mm}")
    return int(seed)


def _source_lungs(source: Volume, lungs: LungMask | None) -> LungMask:
    """The source's lung mask (the classical method's when none is given), checked against the source."""
    if lungs is None:
        from coviax.lungs import segment_lungs

        lungs = segment_lungs(source, "classical")
    if lungs.labels.shape != source.shape:
        raise OptionError(f"lung mask shape {lungs.labels.shape} differs from the source scan's {source.shape}")
    if not lungs.labels.any():
        raise OptionError("the source scan has no lungs (empty lung mask); a phantom needs a chest CT")
    return lungs


def _target_grid(source: Volume, src_lungs: np.ndarray, slice_thickness_mm: float | None):
    """Step 1: the phantom's grid: ``(hu, lung_labels, z_scale, spacing)``, resampled along z to
    ``slice_thickness_mm`` when it differs from the source's, else copies of the source."""
    if slice_thickness_mm is not None and abs(slice_thickness_mm - source.spacing_zyx[0]) > 1e-6:
        hu, lung_labels, z_scale = resample_z(source.hu, src_lungs, source.spacing_zyx[0], float(slice_thickness_mm))
        spacing = (float(slice_thickness_mm), source.spacing_zyx[1], source.spacing_zyx[2])
    else:
        hu, lung_labels, z_scale = source.hu.copy(), src_lungs.copy(), 1.0
        spacing = tuple(float(s) for s in source.spacing_zyx)
    return hu, lung_labels, z_scale, spacing


def _lesions(layout, cavity, coords, src_vals, spacing, z_scale, rng_texture, info: dict):
    """The lesions of ``layout`` in the cavity voxels at ``coords``: their labels and new HU values.

    The lesion fraction is hit by inserting twice (the second time with the target corrected by what the
    first realised); consolidation carries air bronchograms (counted in ``info``).
    """
    zc, yc, xc = coords
    coarse = layout.coarse_coords(zc, yc, xc, z_scale)
    s_val = _sample(layout.s, coarse)
    c_val = _sample(layout.c, coarse)
    g_val = _sample(layout.g, coarse)
    k_val = _sample(layout.k, coarse)
    del coarse
    tex = _texture_at(cavity, coords, spacing, rng_texture)
    vessel = src_vals > VESSEL_HU
    l_ggo = np.clip(GGO_LEVEL_HU[0] + GGO_LEVEL_HU[1] * g_val, GGO_LEVEL_HU[2], GGO_LEVEL_HU[3]) + GGO_TEXTURE_HU * tex
    l_cons = (np.clip(CONSOLIDATION_LEVEL_HU[0] + CONSOLIDATION_LEVEL_HU[1] * k_val, CONSOLIDATION_LEVEL_HU[2],
                      CONSOLIDATION_LEVEL_HU[3]) + CONSOLIDATION_TEXTURE_HU * tex)
    del g_val, k_val

    def insert(fraction: float):
        t = float(np.quantile(s_val, 1.0 - fraction))
        w = np.clip((s_val - t) / LESION_EDGE + 0.5, 0.0, 1.0)
        lesion = w >= 0.5
        share = layout.info["target_consolidation_share"]
        if share > 0 and lesion.any():
            tc = float(np.quantile(c_val[lesion], 1.0 - share))
            wc = np.clip((c_val - tc) / CONSOLIDATION_EDGE + 0.5, 0.0, 1.0)
        else:
            wc = np.zeros_like(w)
        lesion_hu = l_ggo * (1.0 - wc) + l_cons * wc
        kept_vessel = vessel & (src_vals >= lesion_hu)
        is_lesion = lesion & ~kept_vessel
        return w, wc, lesion_hu, is_lesion

    target = layout.info["target_lesion_fraction"]
    w, wc, lesion_hu, is_lesion = insert(target)
    realised = float(is_lesion.mean())
    if realised > 0:
        corrected = min(0.97, target * target / realised)
        w, wc, lesion_hu, is_lesion = insert(corrected)
    cons = is_lesion & (wc >= 0.5)
    tubes = _air_bronchograms(cons, coords, spacing, rng_texture)
    info["air_bronchograms"] = int(tubes[1])
    tube = tubes[0]
    out = src_vals + w * np.maximum(lesion_hu - src_vals, 0.0)
    out[tube] = AIR_BRONCHOGRAM_HU + 15.0 * tex[tube]
    lab = np.where(vessel, np.uint8(Label.VESSEL), np.uint8(Label.HEALTHY_LUNG))
    lab[is_lesion] = Label.GGO
    lab[cons] = Label.CONSOLIDATION
    lab[tube] = Label.HEALTHY_LUNG
    return lab, out


# --------------------------------------------------------------------- geometry


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


# ----------------------------------------------------------------------- layout


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
    sp = np.asarray(source.spacing_zyx, dtype=np.float64)
    stride = tuple(max(1, int(round(COARSE_MM / s))) for s in sp)
    cavity = lung_labels > 0
    lo, hi = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        nz = np.flatnonzero(cavity.any(axis=other))
        pad = 2 * stride[axis]
        lo.append(max(0, int(nz[0]) - pad))
        hi.append(min(cavity.shape[axis], int(nz[-1]) + 1 + pad))
    box = tuple(slice(lo[a], hi[a], stride[a]) for a in range(3))
    lab_c = lung_labels[box]
    cav_c = lab_c > 0
    cs = sp * np.asarray(stride)
    shape = lab_c.shape

    # priors: subpleural, posterior (dependent), basal
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

    low, high = _TARGET_RANGES[severity]
    target = low + (high - low) * float(rng.random())
    c_low, c_high = _CONSOLIDATION_SHARE[severity]
    share = c_low + (c_high - c_low) * float(rng.random())
    n_low, n_high = _BLOB_COUNT[severity]
    n_blobs = int(rng.integers(n_low, n_high + 1))

    # blob centres, alternately right and left (mild: sometimes one lung only)
    sides = [s for s in (RIGHT_LUNG, LEFT_LUNG) if (lab_c == s).any()]
    first = int(rng.integers(len(sides)))
    unilateral = severity == "mild" and rng.random() < 0.35
    zz, yy, xx = np.meshgrid(*(np.arange(n) * cs[a] for a, n in enumerate(shape)), indexing="ij", sparse=True)
    blobs = np.zeros(shape, np.float32)
    centres = []
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
        centres.append([round(float(v), 1) for v in centre])

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


# ------------------------------------------------------------------------ truth


def count_truth(labels: np.ndarray, lung_labels: np.ndarray, voxel_ml: float) -> dict:
    """True volumes (mL) per class, lung volumes and ratios (percent of the lung cavity)."""
    counts = {label: int(np.count_nonzero(labels == label)) for label in Label}
    right = int(np.count_nonzero(lung_labels == RIGHT_LUNG))
    left = int(np.count_nonzero(lung_labels == LEFT_LUNG))
    total = right + left
    ggo, cons = counts[Label.GGO], counts[Label.CONSOLIDATION]

    def pct(n: int) -> float:
        return round(100.0 * n / total, 6) if total else 0.0

    return {
        "voxels": {"healthy_lung": counts[Label.HEALTHY_LUNG], "vessel": counts[Label.VESSEL], "ggo": ggo,
                   "consolidation": cons, "lung": total},
        "volumes_ml": {
            "healthy_lung": round(counts[Label.HEALTHY_LUNG] * voxel_ml, 4),
            "vessel": round(counts[Label.VESSEL] * voxel_ml, 4),
            "ggo": round(ggo * voxel_ml, 4),
            "consolidation": round(cons * voxel_ml, 4),
            "lesion": round((ggo + cons) * voxel_ml, 4),
        },
        "lung_ml": {"left": round(left * voxel_ml, 4), "right": round(right * voxel_ml, 4),
                    "total": round(total * voxel_ml, 4)},
        "ratios_pct": {"all": pct(ggo + cons), "ggo": pct(ggo), "consolidation": pct(cons)},
    }


def _truth(labels, lung_labels, volume: Volume, seed, severity, noise, thickness, info, source: Volume,
           source_sha: str, lung_method: str) -> dict:
    truth = {
        "generator": "coviax.phantom",  # its name in truth.json since version 1 (the module moved, the generator did not)
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "severity": severity,
        "severity_range_pct": [100 * v for v in SEVERITY_RANGES[severity]],
        "noise_sigma_hu": float(noise),
        "slice_thickness_mm": None if thickness is None else float(thickness),
        "shape_zyx": list(volume.shape),
        "spacing_zyx_mm": [float(s) for s in volume.spacing_zyx],
        "voxel_volume_ml": volume.voxel_volume_ml,
        "source": {"hu_sha256": source_sha, "shape_zyx": list(source.shape),
                   "spacing_zyx_mm": [float(s) for s in source.spacing_zyx], "lung_method": lung_method},
        "label_codes": {label.name.lower(): int(label) for label in Label},
        "label_rule": "lesion where the inserted lesion weight >= 0.5 unless a source vessel (> -500 HU) is at "
        "least as dense as the lesion; consolidation where the consolidation weight >= 0.5; air bronchograms "
        "are healthy lung; other lung voxels are vessel above -500 HU in the source, else healthy lung",
    }
    truth.update(count_truth(labels, lung_labels, volume.voxel_volume_ml))
    lesion = labels >= Label.GGO
    truth["lesion_components"] = int(cc3d.connected_components(lesion, connectivity=26, return_N=True)[1]) if lesion.any() else 0
    truth["layout"] = info
    return truth


# ------------------------------------------------------------------------ write


def write_phantom(phantom: Phantom, out_dir) -> dict[str, Path]:
    """Write the phantom: a DICOM CT series, image.nii.gz, labels.nii.gz and truth.json.

    The DICOM series has new UIDs, PatientName ``COVIAX^PHANTOM``, PatientID
    ``PHANTOM-<seed>`` and nothing copied from the source's headers;
    :func:`coviax.io.read_scan` reads it back to the same HU and geometry.
    Returns the paths by name (``dicom``, ``image``, ``labels``, ``truth``).
    """
    import SimpleITK as sitk

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dicom_dir = out / "dicom"
    write_dicom_series(phantom.volume, dicom_dir, seed=int(phantom.truth.get("seed", 0)),
                       description=f"COViaX hybrid phantom seed {phantom.truth.get('seed')} "
                                   f"{phantom.truth.get('severity')}")
    image = out / "image.nii.gz"
    labels = out / "labels.nii.gz"
    sitk.WriteImage(phantom.volume.to_sitk(), str(image), useCompression=True)
    sitk.WriteImage(phantom.volume.to_sitk(phantom.labels), str(labels), useCompression=True)
    truth = out / "truth.json"
    truth.write_text(json.dumps(phantom.truth, indent=2) + "\n")
    return {"dicom": dicom_dir, "image": image, "labels": labels, "truth": truth}


def write_dicom_series(volume: Volume, folder, seed: int, description: str = "COViaX hybrid phantom") -> list[Path]:
    """One CT Image Storage file per slice, uint16 stored values with RescaleIntercept -1024."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.dataset import Dataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    d = volume.direction
    iop = [float(v) for v in np.concatenate([d[:, 0], d[:, 1]])]
    normal = np.cross(d[:, 0], d[:, 1])
    rows, cols = volume.shape[1], volume.shape[2]
    paths = []
    for k in range(volume.shape[0]):
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
        ds.AccessionNumber = ""
        ds.Modality = "CT"
        ds.Manufacturer = "COViaX hybrid phantom"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "COViaX hybrid phantom (research use only)"
        ds.SeriesDescription = description[:64]
        ds.PatientName = "COVIAX^PHANTOM"
        ds.PatientID = f"PHANTOM-{seed}"
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "COViaX hybrid phantom: pixel data only, no source header copied"
        ds.BodyPartExamined = "CHEST"
        ds.SliceThickness = _ds(volume.spacing_zyx[0])
        ds.SpacingBetweenSlices = _ds(volume.spacing_zyx[0])
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "PHANTOM"
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        position = volume.index_to_patient([k, 0, 0])
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in iop]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = _ds(np.dot(position, normal))
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.PixelSpacing = [_ds(volume.spacing_zyx[1]), _ds(volume.spacing_zyx[2])]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.WindowCenter = "-600"
        ds.WindowWidth = "1500"
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        stored = (volume.hu[k].astype(np.int32) + 1024).clip(0, 65535).astype("<u2")
        ds.PixelData = stored.tobytes()
        path = folder / f"CT{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _ds(value: float) -> str:
    """A Decimal String of at most 16 characters, as exact as it allows."""
    from pydicom.valuerep import format_number_as_ds

    value = float(value)
    if abs(value) < 1e-9:
        value = 0.0
    return format_number_as_ds(value)
