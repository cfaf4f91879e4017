"""The surface meshes of the lung cavity, GGO and consolidation (see :mod:`coviax.export.mesh`): masks,
marching cubes on a coarser grid at the level that keeps the volume, hole closing, Taubin smoothing,
decimation, and the voxel -> patient LPS mm mapping."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from coviax.labels import COLOURS, Label

#: (name, display name, RGBA colour 0-1) of each structure, in drawing order.
STRUCTURES = (
    ("lung", "lung cavity", tuple(c / 255 for c in COLOURS[Label.HEALTHY_LUNG]) + (0.18,)),
    ("ggo", "ground-glass opacity", tuple(c / 255 for c in COLOURS[Label.GGO]) + (1.0,)),
    ("consolidation", "consolidation", tuple(c / 255 for c in COLOURS[Label.CONSOLIDATION]) + (1.0,)),
)

DEFAULT_TARGET_MM = 2.5  # grid of the contoured mask (per axis; never finer than the voxels)
#: Lesion masks are speckled (a voxel classifier's output): contoured as the
#: envelope of the hazy region with the mask's volume (see :func:`mesh_from_mask`).
LESION_OPTIONS = {"level": "volume", "blur": 1.0}
DEFAULT_MAX_FACES = 60_000  # per structure, after decimation


@dataclass
class Mesh:
    """A triangle mesh: ``vertices`` (n, 3) float64 patient LPS mm, ``faces`` (m, 3) int64, outward normals."""

    name: str
    vertices: np.ndarray
    faces: np.ndarray

    @property
    def empty(self) -> bool:
        return len(self.faces) == 0

    def volume_ml(self) -> float:
        return mesh_volume_mm3(self.vertices, self.faces) / 1000.0


def structure_masks(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Binary masks of the three structures from a lesion label volume."""
    return {
        "lung": labels != Label.BACKGROUND,
        "ggo": labels == Label.GGO,
        "consolidation": labels == Label.CONSOLIDATION,
    }


def mesh_volume_mm3(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Signed volume enclosed by a closed, consistently oriented mesh (divergence theorem)."""
    if len(faces) == 0:
        return 0.0
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def mesh_from_mask(
    mask: np.ndarray,
    spacing_zyx,
    index_to_patient=None,
    name: str = "mask",
    target_mm: float = DEFAULT_TARGET_MM,
    smooth_iterations: int = 6,
    max_faces: int = DEFAULT_MAX_FACES,
    level: float | str = 0.5,
    blur: float = 0.0,
) -> Mesh:
    """Surface of a binary (z y x) mask in patient mm.

    Parameters
    ----------
    spacing_zyx:
        voxel size in mm.
    index_to_patient:
        maps (..., 3) array indices (z y x, float) to patient LPS mm; by default
        indices times spacing, axes reversed to (x y z).
    target_mm:
        grid size to contour on: the mask is block-averaged by
        ``round(target_mm / spacing)`` voxels along each axis (at least 1, so a
        5 mm slice spacing is kept as it is).
    max_faces:
        decimation: while the surface has more triangles, the grid is coarsened
        by one more voxel per block in-plane and contoured again (keeps the
        surface closed and its volume, unlike edge collapsing done cheaply).
    level:
        the iso-value of the fraction field: 0.5 (the voxel boundary), or
        ``"volume"``: the value at which the field encloses as many grid cells
        as the mask has voxels -- for speckled masks (GGO), whose local fraction
        is often below 0.5: their surface becomes the envelope of the hazy
        region with the mask's volume.
    blur:
        Gaussian sigma (in grid cells, in-plane only) applied to the fraction
        field before contouring; 0 for none.
    """
    spacing = np.asarray(spacing_zyx, dtype=np.float64)
    if index_to_patient is None:
        def index_to_patient(zyx):
            return (np.asarray(zyx) * spacing)[..., ::-1]
    empty = Mesh(name, np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64))
    box = _bbox(mask)
    if box is None:
        return empty
    contoured = _contour_coarsening(mask[box], spacing, target_mm, max_faces, level, blur)
    if contoured is None:
        return empty
    verts, faces, factors = contoured
    starts = np.array([s.start for s in box], dtype=np.float64)
    # grid index -> source index: grid cell j (after the pad of 1) is the block of
    # source voxels j*f .. j*f + f - 1, whose centre is j*f + (f - 1) / 2.
    verts = (verts - 1.0) * factors + (factors - 1) / 2.0 + starts
    return _closed_smooth_mesh(name, verts, faces, spacing, smooth_iterations, index_to_patient)


def _closed_smooth_mesh(name: str, verts: np.ndarray, faces: np.ndarray, spacing: np.ndarray,
                        smooth_iterations: int, index_to_patient) -> Mesh:
    """The mesh in patient mm from vertices in source indices: small holes closed, Taubin-smoothed in mm,
    faces turned outwards."""
    faces = close_small_holes(faces.astype(np.int64))
    verts_mm = verts * spacing  # smooth in mm, not in anisotropic voxel units
    if smooth_iterations:
        verts_mm = taubin_smooth(verts_mm, faces, smooth_iterations)
    patient = np.asarray(index_to_patient(verts_mm / spacing), dtype=np.float64)
    if mesh_volume_mm3(patient, faces) < 0:
        faces = faces[:, ::-1].copy()
    return Mesh(name, patient, faces)


def _contour_coarsening(src: np.ndarray, spacing: np.ndarray, target_mm: float, max_faces: int,
                        level: float | str, blur: float):
    """(vertices in padded grid cells, faces, block factors) of the mask cropped to its box, on a grid
    coarsened in-plane until the surface has at most ``max_faces`` triangles; None when it has none."""
    from scipy import ndimage
    from skimage.measure import marching_cubes

    n_voxels = int(np.count_nonzero(src))
    factors = np.array([max(1, int(round(target_mm / s))) for s in spacing])
    while True:
        field = _block_mean(src, factors)
        if blur > 0:
            field = ndimage.gaussian_filter(field, sigma=(0, blur, blur), mode="constant")
        field = np.pad(field, 1)
        if level == "volume":
            verts, faces = _contour_to_volume(field, n_voxels / float(np.prod(factors)))
        else:
            if field.max() <= level:
                return None
            verts, faces, _, _ = marching_cubes(field, level=float(level), allow_degenerate=False)
        if len(faces) == 0:
            return None
        if len(faces) <= max_faces or factors[1] * spacing[1] > 8 * target_mm:
            return verts, faces, factors
        factors[1:] += 1


def _block_mean(mask: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Mean of ``mask`` over blocks of ``factors`` voxels (the box is zero-padded to whole blocks)."""
    sizes = -(-np.array(mask.shape) // factors) * factors
    grid = np.zeros(tuple(sizes), dtype=np.float32)
    grid[: mask.shape[0], : mask.shape[1], : mask.shape[2]] = mask
    if np.all(factors == 1):
        return grid
    z, y, x = grid.shape
    fz, fy, fx = (int(f) for f in factors)
    return grid.reshape(z // fz, fz, y // fy, fy, x // fx, fx).mean(axis=(1, 3, 5))


def _contour_to_volume(field: np.ndarray, cells: float, tolerance: float = 0.02, tries: int = 6):
    """Marching cubes at the iso-value whose surface encloses ``cells`` grid cells (to ``tolerance``).

    Starts at the value above which ``field`` has ``cells`` cells, then corrects
    by regula falsi on the enclosed volume (thin structures, one 5 mm slice
    thick, enclose less than their cells at any level, so the first guess is
    always low). The level stays within 0.02..0.5.
    """
    from skimage.measure import marching_cubes

    flat = field.ravel()
    k = int(round(cells))
    if k <= 0:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    lo_t, hi_t = 0.02, 0.5
    t = float(np.clip(np.partition(flat, flat.size - k)[flat.size - k], lo_t, hi_t)) if k < flat.size else 0.5
    top = float(flat.max())
    bracket = {}  # level -> volume; volume falls as the level rises
    best = None
    for _ in range(tries):
        if t >= top:
            t = 0.5 * (top + max(lo_t, min(bracket, default=lo_t)))
        verts, faces, _, _ = marching_cubes(field, level=t, allow_degenerate=False)
        v = abs(mesh_volume_mm3(verts, faces))
        if best is None or abs(v - cells) < abs(best[2] - cells):
            best = (verts, faces, v)
        if abs(v - cells) <= tolerance * cells:
            break
        bracket[t] = v
        above = [(lt, lv) for lt, lv in bracket.items() if lv > cells]  # levels too low
        below = [(lt, lv) for lt, lv in bracket.items() if lv < cells]  # levels too high
        if above and below:
            (t0, v0), (t1, v1) = max(above), min(below)
            t_new = t0 + (v0 - cells) * (t1 - t0) / (v0 - v1)
        elif below:
            t_new = min(below)[0] * 0.7
        else:
            t_new = max(above)[0] * 1.3
        t_new = float(np.clip(t_new, lo_t, hi_t))
        if t_new == t:
            break
        t = t_new
    return best[0], best[1]


def meshes_for(labels: np.ndarray, volume, **kwargs) -> list[Mesh]:
    """The three structure meshes of a label volume in ``volume``'s patient geometry."""
    masks = structure_masks(labels)
    meshes = []
    for name, _, _ in STRUCTURES:
        options = dict(LESION_OPTIONS if name != "lung" else {}, **kwargs)
        meshes.append(mesh_from_mask(masks[name], volume.spacing_zyx, volume.index_to_patient, name=name, **options))
    return meshes


def _bbox(mask: np.ndarray):
    z_any = mask.any(axis=(1, 2))
    if not z_any.any():
        return None
    zs = np.flatnonzero(z_any)
    plane = mask[zs[0] : zs[-1] + 1].any(axis=0)
    ys = np.flatnonzero(plane.any(axis=1))
    xs = np.flatnonzero(plane.any(axis=0))
    return (slice(int(zs[0]), int(zs[-1]) + 1), slice(int(ys[0]), int(ys[-1]) + 1), slice(int(xs[0]), int(xs[-1]) + 1))



def close_small_holes(faces: np.ndarray, max_edges: int = 8) -> np.ndarray:
    """Fill the few small holes marching cubes leaves where it drops a degenerate triangle.

    Boundary edges (a directed edge whose reverse no face has) are followed into
    loops; a loop of up to ``max_edges`` edges is closed with a fan of
    triangles wound against it (so they face the same way as their neighbours).
    Larger openings are left alone.
    """
    if len(faces) == 0:
        return faces
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    n = int(faces.max()) + 1
    code = directed[:, 0] * n + directed[:, 1]
    reverse = directed[:, 1] * n + directed[:, 0]
    open_edges = directed[~np.isin(reverse, code)]
    if len(open_edges) == 0:
        return faces
    following = {int(a): int(b) for a, b in open_edges}
    added = []
    seen: set[int] = set()
    for start in list(following):
        if start in seen:
            continue
        loop = [start]
        while len(loop) <= max_edges:
            nxt = following.get(loop[-1])
            if nxt is None or nxt == start:
                break
            loop.append(nxt)
        seen.update(loop)
        if following.get(loop[-1]) == start and 3 <= len(loop) <= max_edges:
            # loop a -> b -> c ...: faces (a, c, b), (a, d, c), ... hold b -> a, c -> b, ... (reversed)
            added += [(loop[0], loop[k + 1], loop[k]) for k in range(1, len(loop) - 1)]
    if not added:
        return faces
    return np.concatenate([faces, np.asarray(added, dtype=faces.dtype)])


def _umbrella(faces: np.ndarray, n: int) -> sparse.csr_matrix:
    """Row-normalised vertex adjacency (uniform Laplacian weights)."""
    i = faces[:, [0, 1, 2, 1, 2, 0]].ravel()
    j = faces[:, [1, 2, 0, 0, 1, 2]].ravel()
    adj = sparse.coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)).tocsr()
    adj.data[:] = 1.0  # duplicate edges (shared by two faces) count once
    degree = np.asarray(adj.sum(axis=1)).ravel()
    degree[degree == 0] = 1.0
    return sparse.diags(1.0 / degree) @ adj


def taubin_smooth(vertices: np.ndarray, faces: np.ndarray, iterations: int = 6,
                  lam: float = 0.5, mu: float = -0.53) -> np.ndarray:
    """Taubin lambda/mu smoothing: removes the marching-cubes staircase without shrinking."""
    if len(faces) == 0:
        return vertices
    w = _umbrella(faces, len(vertices))
    v = vertices.astype(np.float64, copy=True)
    for _ in range(iterations):
        v = v + lam * (w @ v - v)
        v = v + mu * (w @ v - v)
    return v


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    n = np.zeros_like(vertices, dtype=np.float64)
    fn = np.cross(vertices[faces[:, 1]] - vertices[faces[:, 0]], vertices[faces[:, 2]] - vertices[faces[:, 0]])
    for k in range(3):
        np.add.at(n, faces[:, k], fn)
    length = np.linalg.norm(n, axis=1, keepdims=True)
    n = n / np.where(length > 0, length, 1.0)
    n[length[:, 0] == 0] = (0.0, 0.0, 1.0)  # glTF wants unit normals everywhere
    return n
