"""``render_3d.png``: the meshes from the front (anterior view, orthographic), the lung semi-transparent."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from coviax.export.mesh.surface import STRUCTURES, Mesh

def render_png(meshes: list[Mesh], path: str | Path | None = None, title: str = "", size_px: int = 640,
               lung_alpha: float = 0.35):
    """Anterior view (orthographic, patient's right on the image left) of the meshes; returns the RGB array.

    Our own projection and painter's sort drawn with matplotlib PolyCollections
    (much faster than mplot3d on ~100k triangles, same picture), Lambert shading
    with a light from the viewer's upper right. The opaque lesions are drawn in
    one layer and the lung's front surface in another; the lung layer is blended
    over the lesions with ``lung_alpha`` -- a see-through lung without the seams
    that per-triangle transparency leaves.
    """
    drawn = [m for m in meshes if not m.empty]
    if drawn:
        xy = np.concatenate([m.vertices[:, [0, 2]] for m in drawn])
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        pad = 0.04 * float((hi - lo).max())
        limits = (lo[0] - pad, hi[0] + pad, lo[1] - pad, hi[1] + pad)
    else:
        limits = (0.0, 1.0, 0.0, 1.0)
    height = int(size_px * 0.92)
    lesions = _render_layer([m for m in drawn if m.name != "lung"], limits, size_px, height)
    lung = _render_layer([m for m in drawn if m.name == "lung"], limits, size_px, height)
    base = lesions[..., :3] + (1.0 - lesions[..., 3:4])  # lesions over white (premultiplied "over")
    image = base * (1.0 - lung_alpha * lung[..., 3:4]) + lung_alpha * lung[..., :3]
    rgb = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    rgb = _frame(rgb, size_px, title, empty=not drawn)
    if path is not None:
        from PIL import Image

        Image.fromarray(rgb).save(Path(path))
    return rgb


def _render_layer(meshes: list[Mesh], limits, width: int, height: int) -> np.ndarray:
    """Premultiplied RGBA float image (height, width, 4) of the front faces of ``meshes``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure

    colours = {name: rgba for name, _, rgba in STRUCTURES}
    light = np.array([0.35, -0.8, 0.5])  # LPS: from the viewer's side (anterior, -y), above, image right
    light /= np.linalg.norm(light)
    fig = Figure(figsize=(width / 100, height / 100), dpi=100, facecolor=(1, 1, 1, 0))
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    x0, x1, y0, y1 = limits
    mm_per_px = max((x1 - x0) / width, (y1 - y0) / height)  # equal scale on both axes, centred
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    ax.set_xlim(cx - mm_per_px * width / 2, cx + mm_per_px * width / 2)
    ax.set_ylim(cy - mm_per_px * height / 2, cy + mm_per_px * height / 2)
    tris, depth, cols = [], [], []
    for mesh in meshes:
        t = mesh.vertices[mesh.faces]
        n = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        front = n[:, 1] < 0  # outward normal towards the viewer (-y, anterior)
        t, n = t[front], n[front]
        shade = 0.3 + 0.7 * np.clip(n @ light, 0, 1)
        col = np.ones((len(t), 4))
        col[:, :3] = np.asarray(colours.get(mesh.name, (0.8, 0.8, 0.8, 1.0))[:3]) * shade[:, None]
        tris.append(t[:, :, [0, 2]])  # screen x = patient left (+x), screen y = superior (+z)
        depth.append(t[:, :, 1].mean(axis=1))  # larger y = more posterior = farther
        cols.append(col)
    if tris:
        order = np.argsort(-np.concatenate(depth), kind="stable")  # far first
        ax.add_collection(PolyCollection(np.concatenate(tris)[order], facecolors=np.concatenate(cols)[order],
                                         edgecolors="none", linewidths=0, antialiaseds=False),
                          autolim=False)  # the limits are set above; computing them costs ~0.3 s
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba()).astype(np.float32) / 255.0
    alpha = rgba[..., 3:4]
    return np.concatenate([rgba[..., :3] * alpha, alpha], axis=2)  # Agg gives straight alpha: premultiply


def _frame(rgb: np.ndarray, width: int, title: str, empty: bool) -> np.ndarray:
    """The rendered view with title, R/L marks and a legend drawn around it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    fig = Figure(figsize=(width / 100, width / 100), dpi=100, facecolor="white")
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, rgb.shape[0] / width))
    ax.imshow(rgb, interpolation="nearest")
    ax.axis("off")
    ax.text(0.01, 0.01, "R", transform=ax.transAxes, fontsize=13, weight="bold")
    ax.text(0.97, 0.01, "L", transform=ax.transAxes, fontsize=13, weight="bold")
    if empty:
        ax.text(0.5, 0.5, "no lung found", ha="center", va="center", transform=ax.transAxes)
    handles = [Patch(color=rgba[:3], alpha=max(rgba[3], 0.35), label=label) for _, label, rgba in STRUCTURES]
    ax.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.98))
    if title:
        fig.suptitle(title, fontsize=10, y=0.995)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


RENDER_TITLE = "3D reconstruction, anterior view"
