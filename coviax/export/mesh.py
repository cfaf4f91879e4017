"""3D reconstruction: surface meshes of the lung cavity, GGO and consolidation.

Per structure: the binary mask is cropped to its bounding box, block-averaged
to a grid of about ``target_mm`` (2.5 mm; never finer than the voxels, so 5 mm
slices stay as they are) -- a partial-volume fraction, so the coarser grid keeps
the volume -- padded with one empty cell all round so that every surface
closes, and contoured with marching cubes (scikit-image):

- the lung cavity at 0.5 (the voxel boundary);
- GGO and consolidation, which a voxel classifier leaves speckled, after a
  light in-plane blur at the level whose surface encloses the mask's voxel
  volume (to a few %): the envelope of the hazy region, not hundreds of
  thousands of single-voxel specks (at 0.5 most of a speckled GGO vanishes).

The few triangle-sized holes marching cubes leaves where it drops degenerate
triangles are closed, a few Taubin lambda/mu iterations smooth the staircase
without the shrinking of plain Laplacian smoothing, and decimation keeps each
structure under ``max_faces`` triangles by contouring again on a coarser grid
(which keeps the surface closed and its volume). Vertices are in patient LPS
millimetres, mapped from voxel indices with the scan's origin, spacing and
direction, so a mesh lines up with the DICOM series and with the blob
centroids of the report.

Files:

- ``lungs_3d.glb``: glTF 2.0 binary, one mesh per structure with its colour
  (lung semi-transparent). The vertex data are LPS mm; a root node turns them
  into glTF's metres, Y up (superior), Z towards the viewer (anterior), so a
  glTF viewer opens on the anterior view with the patient's right on the left.
- ``lung.stl``, ``ggo.stl``, ``consolidation.stl``: binary STL in LPS mm.
- ``render_3d.png``: the three together from the front (anterior view,
  orthographic), the lung semi-transparent.

Nothing here reads patient identifiers.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

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
    from scipy import ndimage
    from skimage.measure import marching_cubes

    spacing = np.asarray(spacing_zyx, dtype=np.float64)
    if index_to_patient is None:
        def index_to_patient(zyx):
            return (np.asarray(zyx) * spacing)[..., ::-1]
    empty = Mesh(name, np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64))
    box = _bbox(mask)
    if box is None:
        return empty
    src = mask[box]
    n_voxels = int(np.count_nonzero(src))
    starts = np.array([s.start for s in box], dtype=np.float64)
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
                return empty
            verts, faces, _, _ = marching_cubes(field, level=float(level), allow_degenerate=False)
        if len(faces) == 0:
            return empty
        if len(faces) <= max_faces or factors[1] * spacing[1] > 8 * target_mm:
            break
        factors[1:] += 1
    # grid index -> source index: grid cell j (after the pad of 1) is the block of
    # source voxels j*f .. j*f + f - 1, whose centre is j*f + (f - 1) / 2.
    verts = (verts - 1.0) * factors + (factors - 1) / 2.0 + starts
    faces = close_small_holes(faces.astype(np.int64))
    verts_mm = verts * spacing  # smooth in mm, not in anisotropic voxel units
    if smooth_iterations:
        verts_mm = taubin_smooth(verts_mm, faces, smooth_iterations)
    patient = np.asarray(index_to_patient(verts_mm / spacing), dtype=np.float64)
    if mesh_volume_mm3(patient, faces) < 0:
        faces = faces[:, ::-1].copy()
    return Mesh(name, patient, faces)


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


# --------------------------------------------------------------------------- mesh processing


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


# --------------------------------------------------------------------------- files

#: glTF's frame from LPS: x = patient left, y = superior, z = anterior; mm -> m.
LPS_TO_GLTF = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])


def write_glb(meshes: list[Mesh], path: str | Path) -> Path:
    """One glTF 2.0 binary file with a mesh (and colour) per non-empty structure."""
    colours = {name: rgba for name, _, rgba in STRUCTURES}
    buffer = bytearray()
    views, accessors, gl_meshes, materials, nodes = [], [], [], [], []

    def add_view(data: bytes, target: int) -> int:
        while len(buffer) % 4:
            buffer.append(0)
        views.append({"buffer": 0, "byteOffset": len(buffer), "byteLength": len(data), "target": target})
        buffer.extend(data)
        return len(views) - 1

    for mesh in meshes:
        if mesh.empty:
            continue
        pos = mesh.vertices.astype(np.float32)
        nor = vertex_normals(mesh.vertices, mesh.faces).astype(np.float32)
        idx = mesh.faces.astype(np.uint32)
        accessors.append({"bufferView": add_view(pos.tobytes(), 34962), "componentType": 5126, "count": len(pos),
                          "type": "VEC3", "min": pos.min(axis=0).tolist(), "max": pos.max(axis=0).tolist()})
        p_acc = len(accessors) - 1
        accessors.append({"bufferView": add_view(nor.tobytes(), 34962), "componentType": 5126, "count": len(nor),
                          "type": "VEC3"})
        n_acc = len(accessors) - 1
        accessors.append({"bufferView": add_view(idx.tobytes(), 34963), "componentType": 5125, "count": idx.size,
                          "type": "SCALAR"})
        i_acc = len(accessors) - 1
        rgba = list(colours.get(mesh.name, (0.8, 0.8, 0.8, 1.0)))
        material = {"name": mesh.name, "doubleSided": rgba[3] < 1.0,
                    "pbrMetallicRoughness": {"baseColorFactor": rgba, "metallicFactor": 0.0, "roughnessFactor": 0.8}}
        if rgba[3] < 1.0:
            material["alphaMode"] = "BLEND"
        materials.append(material)
        gl_meshes.append({"name": mesh.name, "primitives": [{
            "attributes": {"POSITION": p_acc, "NORMAL": n_acc}, "indices": i_acc, "material": len(materials) - 1}],
            "extras": {"volume_ml": round(mesh.volume_ml(), 3)}})
        nodes.append({"name": mesh.name, "mesh": len(gl_meshes) - 1})
    while len(buffer) % 4:
        buffer.append(0)
    root = np.eye(4)
    root[:3, :3] = LPS_TO_GLTF * 0.001
    # Opaque structures first so that viewers that do not sort blend the lung over them.
    order = sorted(range(len(nodes)), key=lambda k: nodes[k]["name"] == "lung")
    gltf = {
        "asset": {"version": "2.0", "generator": "COViaX (research use only)"},
        "scene": 0,
        "scenes": [{"nodes": [len(nodes)]}],
        "nodes": nodes + [{"name": "patient_LPS_mm", **({"children": order} if order else {}),
                           "matrix": root.T.ravel().tolist()}],  # glTF matrices are column-major
        "meshes": gl_meshes,
        "materials": materials,
        "accessors": accessors,
        "bufferViews": views,
        "buffers": [{"byteLength": len(buffer)}],
        "extras": {"units": "vertex data in patient LPS millimetres; root node maps to metres, Y superior, Z anterior",
                   "notice": "Research use only - not a medical device"},
    }
    if not nodes:  # glTF forbids empty top-level arrays (the Khronos validator's EMPTY_ENTITY): leave them out
        del gltf["meshes"], gltf["materials"], gltf["accessors"], gltf["bufferViews"], gltf["buffers"]
    js = json.dumps(gltf, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 4)
    chunks = struct.pack("<II", len(js), 0x4E4F534A) + js
    if buffer:
        chunks += struct.pack("<II", len(buffer), 0x004E4942) + bytes(buffer)
    path = Path(path)
    path.write_bytes(struct.pack("<III", 0x46546C67, 2, 12 + len(chunks)) + chunks)
    return path


def read_glb(path: str | Path) -> tuple[dict, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The JSON of a .glb written by :func:`write_glb` and its meshes as {name: (vertices, faces)} (for tests)."""
    data = Path(path).read_bytes()
    magic, version, length = struct.unpack_from("<III", data, 0)
    if magic != 0x46546C67 or version != 2 or length != len(data):
        raise ValueError(f"{path}: not a glTF 2.0 binary")
    js_len, _ = struct.unpack_from("<II", data, 12)
    gltf = json.loads(data[20 : 20 + js_len])
    off = 20 + js_len
    binary = b""
    if off < len(data):
        bin_len, _ = struct.unpack_from("<II", data, off)
        binary = data[off + 8 : off + 8 + bin_len]

    def accessor(k: int, dtype) -> np.ndarray:
        acc = gltf["accessors"][k]
        view = gltf["bufferViews"][acc["bufferView"]]
        width = 3 if acc["type"] == "VEC3" else 1
        arr = np.frombuffer(binary, dtype=dtype, count=acc["count"] * width, offset=view["byteOffset"])
        return arr.reshape(-1, 3)

    meshes = {}
    for m in gltf.get("meshes", []):
        prim = m["primitives"][0]
        meshes[m["name"]] = (accessor(prim["attributes"]["POSITION"], np.float32).astype(np.float64),
                             accessor(prim["indices"], np.uint32).astype(np.int64))
    return gltf, meshes


def write_stl(mesh: Mesh, path: str | Path) -> Path:
    """Binary STL in LPS mm (an empty structure gives a valid file with no triangles)."""
    v = mesh.vertices
    f = mesh.faces
    header = f"COViaX {mesh.name} LPS mm research use only".encode()[:80].ljust(80, b" ")
    record = np.zeros(len(f), dtype=[("n", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")])
    if len(f):
        tri = v[f]
        n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        length = np.linalg.norm(n, axis=1, keepdims=True)
        record["n"] = n / np.where(length > 0, length, 1.0)
        record["v"] = tri
    path = Path(path)
    with open(path, "wb") as fh:
        fh.write(header)
        fh.write(struct.pack("<I", len(f)))
        fh.write(record.tobytes())
    return path


def read_stl(path: str | Path) -> np.ndarray:
    """Triangles (m, 3, 3) of a binary STL (for tests)."""
    data = Path(path).read_bytes()
    (count,) = struct.unpack_from("<I", data, 80)
    record = np.frombuffer(data, dtype=[("n", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")], count=count, offset=84)
    return record["v"].astype(np.float64)


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


def write_mesh_files(meshes: list[Mesh], out_dir: str | Path) -> dict[str, Path]:
    """``lungs_3d.glb`` and one ``<structure>.stl`` per mesh; returns {artifact name: path}."""
    out = Path(out_dir)
    artifacts = {"mesh_glb": write_glb(meshes, out / "lungs_3d.glb")}
    for mesh in meshes:
        artifacts[f"mesh_stl_{mesh.name}"] = write_stl(mesh, out / f"{mesh.name}.stl")
    return artifacts


def write_meshes(labels: np.ndarray, volume, out_dir: str | Path) -> dict[str, Path]:
    """Meshes of ``labels`` in ``volume``'s geometry: the .glb, the three .stl files and ``render_3d.png``."""
    meshes = meshes_for(labels, volume)
    artifacts = write_mesh_files(meshes, out_dir)
    artifacts["render_3d"] = Path(out_dir) / "render_3d.png"
    render_png(meshes, artifacts["render_3d"], title=RENDER_TITLE)
    return artifacts
