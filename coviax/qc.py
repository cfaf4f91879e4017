"""Quality control a reader can act on: flags per scan, each with its threshold and why.

:func:`qc_checks` looks at what the pipeline already has (the :class:`~coviax.io.Volume`, the
:class:`~coviax.lungs.LungMask` and the report) and returns one :class:`Check` per question. A check's
``flag`` is True (look at this scan), False (fine) or None (could not tell; the check says why in
``note``). Nothing here changes the quantities; a flagged scan is still measured.

The thresholds are assumptions stated here and in docs/COHORTS.md, not clinical standards:

===================  =========================================================================
``thick_slices``     slice thickness > 3 mm: GGO is a partial-volume finding, and 5 mm slices
                     average faint GGO with aerated lung (the thesis used 1-1.25 mm)
``uneven_spacing``   a step between slice positions > 1.2x the median step. The reader refuses a
                     gap over 1.5x as a missing slice (coviax.io.geometry.GAP_FACTOR), so the scan
                     fails with that error and :func:`flags_for_error` flags ``missing_slices``;
                     between 1.2x and 1.5x it is read but flagged here
``contrast``         blood-pool HU in the mediastinum (see :func:`blood_pool_hu`): >= 110 HU
                     contrast, <= 70 HU non-contrast, between or too little tissue: unknown.
                     Informational (flag True = contrast): iodine raises vessel HU, which the
                     lesion engines may take for consolidation next to the hilum
``lung_volume``      total lung volume outside 2-9 L. An ASSUMPTION: adult total lung capacity is
                     about 4-7 L and a CT at full inspiration measures roughly 3-7 L; 2-9 L is a
                     generous band outside which the scan is partial, expiratory, a child, or the
                     lung mask is wrong
``truncated_lungs``  the lung area on the first or last slice >= 5 % of the largest slice's: the scan
                     does not cover the whole lung, so volumes and VRall describe part of it. A
                     complete scan's apex and base taper to (almost) nothing; a few voxels of the
                     mask at an edge (a 128-pixel scan's apex tip) are not a cut lung
``noise``            noise in outside air > 30 HU (robust SD around the local mean, see
                     :func:`air_noise_hu`): the bundled diagnostic CT (Philips, lung kernel)
                     measures 24 HU; noise beyond that starts to be read as GGO texture
``lung_fallback``    the lung method that ran was the classical morphology (no lung network or
                     lungmask weights, or asked for): it pulls hilar tissue into the lung (see
                     docs/ARCHITECTURE.md), which the lesion engines then count as GGO
===================  =========================================================================

Motion is not detected separately: no honest single number was found for it here; breathing
artefacts raise the air noise only when they streak outside the body. The lesion model's
out-of-distribution signal is not made either (see docs/COHORTS.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

MAX_SLICE_THICKNESS_MM = 3.0
UNEVEN_STEP_FACTOR = 1.2
CONTRAST_HU, NON_CONTRAST_HU = 110.0, 70.0
MIN_BLOOD_POOL_ML = 5.0
LUNG_ML_RANGE = (2000.0, 9000.0)
MAX_AIR_NOISE_HU = 30.0
TRUNCATED_SHARE = 0.05
FALLBACK_LUNG_METHODS = ("classical",)


@dataclass
class Check:
    name: str
    flag: bool | None
    value: float | str | None
    threshold: str
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def qc_checks(volume, lungs) -> list[Check]:
    """Every check of the module docstring on one analysed scan (``lungs``: the mask that was used)."""
    cavity = lungs.labels > 0
    return [_thickness(volume), _spacing(volume), _contrast(volume, lungs.labels), _lung_volume(volume, cavity),
            _truncation(cavity), _noise(volume, cavity), _fallback(lungs)]


def flags_of(checks: list[Check]) -> list[str]:
    """The names of the raised flags; ``contrast`` is information, not a problem, and is left out."""
    return [c.name for c in checks if c.flag and c.name != "contrast"]


def flags_for_error(message: str) -> list[str]:
    """QC flags that a refused scan's error names (the reader refuses missing slices outright)."""
    return ["missing_slices"] if "missing slice" in message else []


def _thickness(volume) -> Check:
    thickness = None
    if volume.source_headers:
        value = getattr(volume.source_headers[0], "SliceThickness", None)
        try:
            thickness = float(value) if value not in (None, "") else None
        except (TypeError, ValueError):
            thickness = None
    note = "SliceThickness (0018,0050)" if thickness is not None else "slice spacing (no SliceThickness tag)"
    if thickness is None:
        thickness = float(volume.spacing_zyx[0])
    return Check("thick_slices", thickness > MAX_SLICE_THICKNESS_MM, round(thickness, 3),
                 f"> {MAX_SLICE_THICKNESS_MM} mm", note)


def _spacing(volume) -> Check:
    headers = volume.source_headers
    threshold = f"a step > {UNEVEN_STEP_FACTOR}x the median step"
    positions = [getattr(h, "ImagePositionPatient", None) for h in headers]
    if len(headers) < 3 or any(p is None for p in positions):
        return Check("uneven_spacing", None, None, threshold, "no DICOM slice positions (not a DICOM series)")
    normal = np.asarray(volume.direction)[:, 2]
    along = np.sort(np.asarray(positions, np.float64) @ normal)
    steps = np.diff(along)
    ratio = float(steps.max() / np.median(steps))
    return Check("uneven_spacing", ratio > UNEVEN_STEP_FACTOR, round(ratio, 3), threshold,
                 "largest step / median step between slice positions")


def blood_pool_hu(hu: np.ndarray, lung_labels: np.ndarray, spacing_zyx) -> tuple[float | None, float]:
    """(median HU, mL) of the soft tissue of the anterior mediastinum, or (None, mL) when too little.

    The box: slices of the middle half of the lungs' height; columns between the two lungs' centres
    (the middle third of that span); rows of the anterior half of the lungs' depth (heart and great
    vessels, not the spine). Voxels between -20 and 500 HU count (fat and air out, cortical bone out);
    their median is the blood-pool estimate. Simple on purpose: it does not find the aorta itself.
    """
    z = np.flatnonzero(lung_labels.any(axis=(1, 2)))
    if z.size < 4:
        return None, 0.0
    z0, z1 = z[0] + z.size // 4, z[0] + 3 * z.size // 4
    labels = lung_labels[z0:z1]
    centres = [ndimage.center_of_mass(labels == code) for code in (1, 2)]
    if any(np.isnan(c).any() for c in centres):
        return None, 0.0
    x_lo, x_hi = sorted((centres[0][2], centres[1][2]))
    third = (x_hi - x_lo) / 3
    ys = np.flatnonzero((labels > 0).any(axis=(0, 2)))
    box = hu[z0:z1, ys[0]:(ys[0] + ys[-1]) // 2 + 1, int(x_lo + third):int(x_hi - third) + 1]
    tissue = box[(box >= -20) & (box <= 500)]
    ml = tissue.size * float(np.prod(spacing_zyx)) / 1000.0
    if ml < MIN_BLOOD_POOL_ML:
        return None, ml
    return float(np.median(tissue)), ml


def _contrast(volume, lung_labels) -> Check:
    threshold = f">= {CONTRAST_HU:g} HU contrast, <= {NON_CONTRAST_HU:g} HU non-contrast"
    blood, ml = blood_pool_hu(volume.hu, lung_labels, volume.spacing_zyx)
    if blood is None:
        return Check("contrast", None, "unknown", threshold, f"too little mediastinal soft tissue ({ml:.1f} mL)")
    note = f"mediastinal blood-pool median {blood:.0f} HU over {ml:.0f} mL"
    if blood >= CONTRAST_HU:
        return Check("contrast", True, "contrast", threshold, note)
    if blood <= NON_CONTRAST_HU:
        return Check("contrast", False, "non-contrast", threshold, note)
    return Check("contrast", None, "unknown", threshold, note + " (between the two thresholds)")


def _lung_volume(volume, cavity) -> Check:
    ml = float(np.count_nonzero(cavity)) * volume.voxel_volume_ml
    low, high = LUNG_ML_RANGE
    return Check("lung_volume", not low <= ml <= high, round(ml, 1), f"outside {low / 1000:g}-{high / 1000:g} L",
                 "assumed adult range, see coviax.qc")


def _truncation(cavity) -> Check:
    areas = np.count_nonzero(cavity, axis=(1, 2))
    largest = int(areas.max()) if areas.size else 0
    share = max(int(areas[0]), int(areas[-1])) / largest if largest else 0.0
    where = [name for name, n in (("first", areas[0]), ("last", areas[-1])) if n]
    note = (f"lung on the {' and '.join(where)} slice: {int(areas[0])} and {int(areas[-1])} voxels" if where else "")
    return Check("truncated_lungs", share >= TRUNCATED_SHARE, round(100 * share, 2),
                 f"an edge slice's lung area >= {100 * TRUNCATED_SHARE:g} % of the largest slice's", note)


def air_noise_hu(hu: np.ndarray, spacing_zyx) -> float | None:
    """Noise in the air outside the body (HU): the robust SD of each voxel minus its 5 x 5 in-plane mean.

    Outside air: at least 10 mm from the body (voxels above -500 HU, holes filled per slice), where
    the 5 x 5 mean is below -900 HU and under a fifth of the voxels sit at the clip floor (-1024: the
    padding outside the reconstruction circle). The local mean takes out slow changes of the air's
    level (streaks, beam hardening), which a plain SD or percentile spread counts as noise; the robust
    SD is 1.4826 x the median absolute deviation, corrected for the mean's own share (sqrt(1 - 1/25)).
    Noise correlated by the reconstruction kernel is partly taken out with the mean, so the value is
    lower than the pixel SD (30 HU of added noise smoothed over 1 pixel reads about 22 HU); it is a
    consistent scale for comparing scans, not the vendor's noise index. Every 16th slice of the scan.
    """
    step = max(1, hu.shape[0] // 16)
    residuals = []
    for s in hu[::step].astype(np.float32):
        body = ndimage.binary_fill_holes(s > -500)
        far = ndimage.distance_transform_edt(~body, sampling=spacing_zyx[1:]) >= 10.0
        mean = ndimage.uniform_filter(s, 5)
        clipped = ndimage.uniform_filter((s <= -1024).astype(np.float32), 5)
        ok = ndimage.binary_erosion(far, np.ones((5, 5), bool)) & (mean < -900) & (clipped < 0.2)
        residuals.append((s - mean)[ok])
    r = np.concatenate(residuals)
    if r.size < 1000:
        return None
    return float(1.4826 * np.median(np.abs(r - np.median(r))) / np.sqrt(1 - 1 / 25))


def _noise(volume, cavity) -> Check:
    threshold = f"> {MAX_AIR_NOISE_HU:g} HU"
    noise = air_noise_hu(volume.hu, volume.spacing_zyx)
    if noise is None:
        return Check("noise", None, None, threshold, "too little outside air in the field of view")
    return Check("noise", noise > MAX_AIR_NOISE_HU, round(noise, 1), threshold,
                 "robust SD of air HU minus its 5 x 5 mean")


def _fallback(lungs) -> Check:
    return Check("lung_fallback", lungs.method in FALLBACK_LUNG_METHODS, lungs.method,
                 "the classical morphology ran", "; ".join(lungs.notes[:1]))
