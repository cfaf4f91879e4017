"""A PNG montage of the most affected axial slices with the class overlay.

For a quick look in any image viewer or e-mail; the DICOM SEG is what a PACS
viewer overlays on the full series.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from coviax.labels import COLOURS, Label

LUNG_WINDOW = (-1350.0, 150.0)  # level -600, width 1500


def most_affected_slices(labels: np.ndarray, n: int = 6) -> list[int]:
    """Slices with the most lesion voxels (or the most lung if there is no lesion), in z order."""
    lesion_per_slice = np.count_nonzero(labels >= Label.GGO, axis=(1, 2))
    score = lesion_per_slice if lesion_per_slice.any() else np.count_nonzero(labels, axis=(1, 2))
    chosen = np.argsort(score, kind="stable")[::-1][:n]
    return sorted(int(z) for z in chosen if score[z] > 0) or [labels.shape[0] // 2]


def overlay_rgb(hu_slice: np.ndarray, label_slice: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """uint8 RGB of one slice in the lung window with lesion and vessel colours blended in."""
    low, high = LUNG_WINDOW
    grey = np.clip((hu_slice.astype(np.float32) - low) / (high - low), 0, 1) * 255
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for label in (Label.VESSEL, Label.GGO, Label.CONSOLIDATION):
        where = label_slice == label
        rgb[where] = (1 - alpha) * rgb[where] + alpha * np.asarray(COLOURS[label], np.float32)
    return rgb.astype(np.uint8)


def write_montage(hu: np.ndarray, labels: np.ndarray, path: str | Path, title: str = "", n: int = 6) -> Path:
    panels = [(f"slice {z + 1} of {hu.shape[0]}", overlay_rgb(hu[z], labels[z])) for z in most_affected_slices(labels, n)]
    legend = [(COLOURS[label], label.display_name) for label in (Label.VESSEL, Label.GGO, Label.CONSOLIDATION)]
    return write_slice_grid(panels, legend, path, title)


def write_slice_grid(panels: list[tuple[str, np.ndarray]], legend: list[tuple[tuple, str]], path: str | Path,
                     title: str = "") -> Path:
    """A PNG of RGB slices (caption, image) in rows of three, a legend ((RGB 0-255, name) per entry) below,
    and the title above the research-use notice. The lesion montage and the follow-up change montage."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt
    from matplotlib.patches import Patch

    cols = min(3, len(panels))
    rows = int(np.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (caption, rgb) in zip(axes.ravel(), panels):
        ax.imshow(rgb)
        ax.set_title(caption, fontsize=9)
    handles = [Patch(color=np.asarray(colour) / 255, label=name) for colour, name in legend]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.suptitle((title + "\n" if title else "") + "Research use only - not a medical device", fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
