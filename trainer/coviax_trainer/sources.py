"""Turning a :class:`ScanSpec` into a :class:`coviax.io.Volume` (in any Ray worker).

Phantoms are rebuilt from the bundled CT and their seed each time they are
needed (generation is deterministic, about 1 s), so the trainer stores no
phantom and never touches ``Phantom.labels``, ``Phantom.lungs`` or
``Phantom.truth``: only ``phantom.volume`` leaves :func:`load_scan`; the lung
mask the pseudo-labels use is segmented from that volume like any scan's.
"""

from __future__ import annotations

import functools

import numpy as np

from coviax.io import Volume, read_scan
from coviax_trainer.config import Preprocess
from coviax_trainer.scans import ScanSpec


def preprocess(volume: Volume, pre: Preprocess) -> Volume:
    """Keep ``z_range`` and average ``downsample`` x ``downsample`` pixel blocks; geometry follows."""
    hu = volume.hu
    z0 = 0
    if pre.z_range is not None:
        z0, z1 = pre.z_range
        z1 = min(z1, hu.shape[0])
        if z0 >= z1:
            from coviax_trainer.errors import TrainConfigError

            raise TrainConfigError(f"preprocess.z_range {pre.z_range} is outside the scan's {hu.shape[0]} slices")
        hu = hu[z0:z1]
    f = int(pre.downsample)
    if f > 1:
        n, h, w = hu.shape
        h2, w2 = h // f, w // f
        blocks = hu[:, : h2 * f, : w2 * f].astype(np.float32).reshape(n, h2, f, w2, f)
        hu = np.rint(blocks.mean(axis=(2, 4))).astype(np.int16)
    if hu is volume.hu:
        return volume
    origin = volume.index_to_patient([z0, (f - 1) / 2.0, (f - 1) / 2.0])
    sz, sy, sx = volume.spacing_zyx
    return Volume(
        hu=np.ascontiguousarray(hu),
        spacing_zyx=(sz, sy * f, sx * f),
        origin_xyz=tuple(float(v) for v in origin),
        direction=volume.direction.copy(),
        source_format=volume.source_format,
        source_path=volume.source_path,
    )


@functools.lru_cache(maxsize=1)
def _bundled_full() -> Volume:
    from coviax.cli import sample_scan_path

    return read_scan(sample_scan_path())


@functools.lru_cache(maxsize=1)
def _bundled_lungs():
    """Lung mask of the bundled CT (our classical segmentation), passed to make_phantom as the source's lungs."""
    from coviax.lungs import segment_lungs

    return segment_lungs(_bundled_full(), "classical")


def load_scan(spec: ScanSpec, pre: Preprocess) -> Volume:
    """The (preprocessed) CT volume of one scan spec.

    Phantoms are built from the full-resolution bundled CT (with its lung mask,
    computed once per worker process) and preprocessed afterwards, like any scan.
    """
    if spec.kind == "sample":
        return preprocess(_bundled_full(), pre)
    if spec.kind == "path":
        return preprocess(read_scan(spec.path), pre)
    if spec.kind == "phantom":
        from coviax_research.phantom import make_phantom

        phantom = make_phantom(
            _bundled_full(),
            seed=int(spec.seed),
            severity=str(spec.severity),
            noise_sigma_hu=float(spec.noise_sigma_hu),
            slice_thickness_mm=spec.slice_thickness_mm,
            lungs=_bundled_lungs(),
        )
        return preprocess(phantom.volume, pre)  # the only field the trainer reads
    raise ValueError(f"unknown scan kind {spec.kind!r}")
