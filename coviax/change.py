"""Follow-up change between two analysed scans of one patient: new, resolved and persistent lesions.

The baseline is registered onto the follow-up with SimpleITK (rigid by default, affine on request:
Mattes mutual information on HU clipped to [-1024, 400] and averaged down to at most 128 pixels
in-plane, a three-level pyramid, a fixed sampling
seed, so a pair gives the same transform every run), its lesion labels are resampled onto the
follow-up grid with nearest neighbour, and each follow-up voxel is classed:

- ``new``: lesion on the follow-up, none at that place on the baseline;
- ``resolved``: lesion on the baseline, none on the follow-up;
- ``persistent``: lesion on both.

The volumes of the three (mL, on the follow-up grid) come with the plain differences of each scan's
own quantities (ΔVRall in percentage points, ΔGGO mL, Δconsolidation mL), which need no
registration at all. Research use only: a follow-up change is a reading aid, not a diagnosis.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coviax.labels import Label

NEW, RESOLVED, PERSISTENT = 1, 2, 3
CHANGE_NAMES = {NEW: "new", RESOLVED: "resolved", PERSISTENT: "persistent"}
CHANGE_COLOURS = {NEW: (230, 40, 40), RESOLVED: (40, 200, 60), PERSISTENT: (240, 200, 0)}
TRANSFORMS = ("rigid", "affine")
CLIP_HU = (-1024.0, 400.0)
REGISTRATION_PIXELS = 128


@dataclass
class Change:
    change_map: np.ndarray  # uint8 on the follow-up grid: 0, NEW, RESOLVED, PERSISTENT
    volumes_ml: dict[str, float]
    deltas: dict[str, float]
    registration: dict

    def to_dict(self) -> dict:
        return {"volumes_ml": self.volumes_ml, "deltas": self.deltas, "registration": self.registration}


def register(fixed, moving, transform: str = "rigid", seed: int = 17):
    """The transform that maps follow-up (``fixed``) points to baseline (``moving``) points, and its metric.

    ``fixed`` and ``moving`` are :class:`coviax.io.Volume`; the transform is a SimpleITK one, as
    ``sitk.Resample(moving_image, fixed_image, transform)`` expects.
    """
    import SimpleITK as sitk

    if transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r}; choose one of {', '.join(TRANSFORMS)}")

    def image(volume):
        # averaged down to at most REGISTRATION_PIXELS in-plane first: the transform is found in mm, and
        # a 512 x 512 pair took 189 s here for no better fit than 128 x 128 in 7 s
        f = max(1, int(np.ceil(max(volume.shape[1:]) / REGISTRATION_PIXELS)))
        img = sitk.Cast(sitk.Clamp(volume.to_sitk(), sitk.sitkInt16, *CLIP_HU), sitk.sitkFloat32)
        return sitk.BinShrink(img, [f, f, 1]) if f > 1 else img

    f_img, m_img = image(fixed), image(moving)
    initial = sitk.CenteredTransformInitializer(
        f_img, m_img, sitk.Euler3DTransform() if transform == "rigid" else sitk.AffineTransform(3),
        sitk.CenteredTransformInitializerFilter.GEOMETRY)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=48)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.2, seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=200,
                                                 gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(initial, inPlace=False)
    result = reg.Execute(f_img, m_img)
    return result, {"transform": transform, "metric": round(float(reg.GetMetricValue()), 5),
                    "iterations": int(reg.GetOptimizerIteration()),
                    "stop": reg.GetOptimizerStopConditionDescription()[:200]}


def resample_labels(labels: np.ndarray, moving, fixed, transform) -> np.ndarray:
    """``labels`` on ``moving``'s grid brought onto ``fixed``'s grid (nearest neighbour, 0 outside)."""
    import SimpleITK as sitk

    out = sitk.Resample(moving.to_sitk(labels.astype(np.uint8)), fixed.to_sitk(), transform,
                        sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(out)


def change_between(base_labels_on_follow: np.ndarray, follow_labels: np.ndarray, voxel_ml: float) -> tuple[np.ndarray, dict]:
    """The change map and its volumes (mL) from two lesion label maps on one grid."""
    before = base_labels_on_follow >= Label.GGO
    after = follow_labels >= Label.GGO
    change = np.zeros(after.shape, np.uint8)
    change[after & ~before] = NEW
    change[before & ~after] = RESOLVED
    change[before & after] = PERSISTENT
    counts = np.bincount(change.ravel(), minlength=4)
    return change, {CHANGE_NAMES[c]: round(float(counts[c]) * voxel_ml, 3) for c in CHANGE_NAMES}


def quantity_deltas(base_report: dict, follow_report: dict) -> dict[str, float]:
    """Follow-up minus baseline of VRall (percentage points) and the lesion volumes (mL)."""
    b, f = base_report, follow_report
    return {
        "d_vr_all_pp": round(float(f["ratios_pct"]["all"]) - float(b["ratios_pct"]["all"]), 4),
        "d_ggo_ml": round(float(f["lesions"]["volume_ml"]["ggo"]) - float(b["lesions"]["volume_ml"]["ggo"]), 3),
        "d_consolidation_ml": round(float(f["lesions"]["volume_ml"]["consolidation"])
                                    - float(b["lesions"]["volume_ml"]["consolidation"]), 3),
    }


def compare_results(base, follow, transform: str = "rigid") -> Change:
    """:class:`Change` between two :class:`coviax.pipeline.Result` (baseline, follow-up)."""
    tx, info = register(follow.volume, base.volume, transform)
    moved = resample_labels(base.lesions.labels, base.volume, follow.volume, tx)
    change, volumes = change_between(moved, follow.lesions.labels, follow.volume.voxel_volume_ml)
    info["parameters"] = [round(float(p), 4) for p in tx.GetParameters()] if hasattr(tx, "GetParameters") else []
    return Change(change, volumes, quantity_deltas(base.report, follow.report), info)


def change_rgb(hu_slice: np.ndarray, change_slice: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """uint8 RGB of one follow-up slice in the lung window with the change colours blended in."""
    from coviax.export.montage import LUNG_WINDOW

    low, high = LUNG_WINDOW
    grey = np.clip((hu_slice.astype(np.float32) - low) / (high - low), 0, 1) * 255
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for code, colour in CHANGE_COLOURS.items():
        where = change_slice == code
        rgb[where] = (1 - alpha) * rgb[where] + alpha * np.asarray(colour, np.float32)
    return rgb.astype(np.uint8)


def write_change_montage(hu: np.ndarray, change: np.ndarray, path: str | Path, title: str = "", n: int = 6) -> Path:
    """PNG of the ``n`` follow-up slices with the most change, new red, resolved green, persistent yellow."""
    from coviax.export.montage import write_slice_grid

    per_slice = np.count_nonzero(change, axis=(1, 2))
    slices = sorted(int(z) for z in np.argsort(per_slice, kind="stable")[::-1][:n] if per_slice[z] > 0)
    slices = slices or [hu.shape[0] // 2]
    panels = [(f"follow-up slice {z + 1} of {hu.shape[0]}", change_rgb(hu[z], change[z])) for z in slices]
    legend = [(CHANGE_COLOURS[c], CHANGE_NAMES[c]) for c in CHANGE_NAMES]
    return write_slice_grid(panels, legend, path, title)
