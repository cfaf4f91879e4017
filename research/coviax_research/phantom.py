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

import hashlib
import math
from dataclasses import dataclass

import cc3d
import numpy as np

from coviax.errors import OptionError
from coviax.io import HU_MAX, HU_MIN, Volume
from coviax.labels import LEFT_LUNG, RIGHT_LUNG, Label
from coviax.lungs import LungMask
from coviax_research.phantom_layout import (
    _air_bronchograms, _layout, _nonzero32, _right_handed, _sample, _texture_at, add_correlated_noise, resample_z,
)

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

_STREAM_LAYOUT, _STREAM_TEXTURE, _STREAM_NOISE = 0, 1, 2


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

    labels, info = _label_and_insert(source, src_lungs, hu, lung_labels, severity, spacing, z_scale, seed)
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


def _label_and_insert(source: Volume, src_lungs: np.ndarray, hu: np.ndarray, lung_labels: np.ndarray,
                      severity: str, spacing, z_scale: float, seed: int) -> tuple[np.ndarray, dict]:
    """Steps 3-7 on the phantom's grid: the true labels, with the lesions of ``severity`` written into
    ``hu`` (in place); returns ``(labels, layout info)``."""
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
    return labels, info


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
