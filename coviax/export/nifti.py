"""``labels.nii.gz``: the label volume in the source scan's geometry (for research tools)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk


def write_labels_nifti(labels: np.ndarray, volume, path: str | Path) -> Path:
    """Write ``labels`` with ``volume``'s spacing, origin and direction (SimpleITK handles LPS->RAS)."""
    path = Path(path)
    sitk.WriteImage(volume.to_sitk(labels.astype(np.uint8)), str(path), useCompression=True)
    return path
