"""Label maps as images, read and written by the trainer's review round trip (:mod:`.correct`) and its
loader (:mod:`.data`): palette PNGs whose pixel value is the label code (:mod:`coviax.labels`), overlays
for the reviewer, and the reader that checks what comes back.

Its own module so that :mod:`.correct` (which uses the data loader) and :mod:`.data` (which reads
corrections) do not import each other.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from coviax.errors import CoviaxError
from coviax.labels import COLOURS, Label
from coviax_trainer.rundir import atomic_path

PALETTE = {0: (0, 0, 0), **{int(k): v for k, v in COLOURS.items()}}


class CorrectionError(CoviaxError):
    """A corrected label file cannot be used (name, size or codes)."""


def lung_window(hu: np.ndarray) -> np.ndarray:
    return (np.clip((hu.astype(np.float32) + 1350.0) / 1500.0, 0, 1) * 255).astype(np.uint8)


def _palette_bytes() -> list[int]:
    flat = []
    for code in range(256):
        flat += list(PALETTE.get(code, (0, 0, 0)))
    return flat


def write_label_png(path: Path, labels: np.ndarray) -> None:
    from PIL import Image

    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    img.putpalette(_palette_bytes())
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def overlay_rgb(hu: np.ndarray, labels: np.ndarray) -> np.ndarray:
    grey = lung_window(hu)
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    coloured = rgb.copy()
    for code, colour in COLOURS.items():
        if code == Label.HEALTHY_LUNG:
            continue  # keep the lung readable; vessels and lesions in colour
        m = labels == code
        coloured[m] = 0.45 * coloured[m] + 0.55 * np.asarray(colour, np.float32)
    return np.concatenate([rgb, coloured], axis=1).astype(np.uint8)


def read_label_image(path: Path) -> np.ndarray:
    """A 2D label map (uint8 codes 0-4) from a palette/grey/RGB PNG or a 2D NIfTI.

    Raises
    ------
    CorrectionError
        for values outside 0-4, unknown colours, or an image that is not 2D.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        import SimpleITK as sitk

        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        arr = np.squeeze(arr)
        if arr.ndim != 2:
            raise CorrectionError(f"{path}: a 2D label map is expected, got an image of shape {arr.shape}")
        if not np.all(np.isclose(arr, np.rint(arr))):
            raise CorrectionError(f"{path}: label codes must be whole numbers")
        arr = np.rint(arr).astype(np.int64)
    else:
        from PIL import Image

        try:
            img = Image.open(path)
            img.load()
        except Exception as exc:
            raise CorrectionError(f"{path}: not a readable image ({exc.__class__.__name__})") from None
        if img.mode in ("P", "L", "I", "I;16"):
            arr = np.asarray(img).astype(np.int64)
        elif img.mode in ("RGB", "RGBA"):
            rgb = np.asarray(img.convert("RGB")).astype(np.int64)
            arr = np.full(rgb.shape[:2], -1, np.int64)
            for code, colour in PALETTE.items():
                arr[np.all(rgb == np.asarray(colour), axis=2)] = code
            bad = np.argwhere(arr < 0)
            if len(bad):
                y, x = bad[0]
                raise CorrectionError(
                    f"{path}: pixel (row {y}, column {x}) has colour {tuple(rgb[y, x])}, which is not a label colour "
                    f"({len(bad)} such pixels); paint only with the palette colours in README.md"
                )
        else:
            raise CorrectionError(f"{path}: image mode {img.mode}; expected an indexed (palette) or greyscale PNG")
    bad = np.argwhere((arr < 0) | (arr > 4))
    if len(bad):
        y, x = bad[0]
        raise CorrectionError(f"{path}: pixel (row {y}, column {x}) has value {arr[y, x]}; label codes are 0-4 ({len(bad)} such pixels)")
    return arr.astype(np.uint8)
