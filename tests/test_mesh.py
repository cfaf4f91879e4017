"""3D reconstruction (coviax.export.mesh): volumes, patient geometry, glTF/STL files, the render."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from coviax.export import mesh as M
from coviax.export.mesh import surface as S
from mesh_readers import read_glb, read_stl
from coviax.labels import Label
from coviax.io import Volume


def _ball(shape, centre_zyx, radius_mm, spacing) -> np.ndarray:
    z, y, x = np.indices(shape, dtype=np.float64)
    d = ((z - centre_zyx[0]) * spacing[0]) ** 2 + ((y - centre_zyx[1]) * spacing[1]) ** 2 + ((x - centre_zyx[2]) * spacing[2]) ** 2
    return d <= radius_mm**2


def _edge_uses(faces: np.ndarray) -> np.ndarray:
    """How many faces use each undirected edge: all 2 on a closed, manifold surface."""
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    return np.unique(edges, axis=0, return_counts=True)[1]


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 0.8, 0.8), (5.0, 0.84, 0.84)])
def test_sphere_mesh_volume_matches_voxel_volume(spacing):
    shape = (int(80 / spacing[0]), int(80 / spacing[1]), int(80 / spacing[2]))
    centre = tuple((s - 1) / 2 for s in shape)
    mask = _ball(shape, centre, 30.0, spacing)
    voxel_mm3 = mask.sum() * np.prod(spacing)
    mesh = M.mesh_from_mask(mask, spacing)
    assert mesh.volume_ml() * 1000 == pytest.approx(voxel_mm3, rel=0.03)
    assert mesh.volume_ml() * 1000 == pytest.approx(4 / 3 * np.pi * 30.0**3, rel=0.05)
    assert set(_edge_uses(mesh.faces)) == {2}  # closed


def test_small_holes_are_closed_with_matching_winding():
    mask = _ball((20, 20, 20), (9.5, 9.5, 9.5), 7.0, (1.0, 1.0, 1.0))
    mesh = M.mesh_from_mask(mask, (1.0, 1.0, 1.0), smooth_iterations=0)
    holed = np.delete(mesh.faces, [5, 100, 101], axis=0)
    assert set(_edge_uses(holed)) == {1, 2}
    closed = S.close_small_holes(holed)
    assert set(_edge_uses(closed)) == {2} and len(closed) == len(mesh.faces)
    assert S.mesh_volume_mm3(mesh.vertices, closed) == pytest.approx(S.mesh_volume_mm3(mesh.vertices, mesh.faces))


@pytest.mark.parametrize("direction", [np.diag([1.0, 1.0, 1.0]), np.diag([1.0, -1.0, -1.0]), np.diag([-1.0, 1.0, 1.0])])
def test_mesh_is_in_patient_mm_and_outward(direction):
    # an off-centre ball in a volume with an origin and a (possibly left-handed) direction
    spacing = (2.0, 0.9, 0.9)
    shape = (30, 70, 70)
    centre = (12.0, 40.0, 25.0)
    volume = Volume(hu=np.zeros(shape, np.int16), spacing_zyx=spacing, origin_xyz=(-100.0, 50.0, 300.0), direction=direction)
    labels = np.where(_ball(shape, centre, 15.0, spacing), Label.CONSOLIDATION, 0).astype(np.uint8)
    lung, ggo, cons = M.meshes_for(labels, volume)
    assert cons.volume_ml() > 0  # faces wound outward whatever the handedness of the direction
    assert cons.volume_ml() * 1000 == pytest.approx(np.count_nonzero(labels) * np.prod(spacing), rel=0.05)
    assert np.allclose(cons.vertices.mean(axis=0), volume.index_to_patient(centre), atol=1.0)
    assert ggo.empty and len(ggo.vertices) == 0 and not lung.empty


def test_real_ct_lung_mesh_volume(sample_volume, sample_lungs):
    mask = sample_lungs.labels > 0
    mesh = M.mesh_from_mask(mask, sample_volume.spacing_zyx, sample_volume.index_to_patient, name="lung")
    voxel_ml = mask.sum() * sample_volume.voxel_volume_ml
    assert mesh.volume_ml() == pytest.approx(voxel_ml, rel=0.05)
    assert len(mesh.faces) <= S.DEFAULT_MAX_FACES + 100  # (+ the few triangles that close holes)
    assert set(_edge_uses(mesh.faces)) == {2}  # closed: the volume is meaningful
    # the mesh lies where the lungs are, in patient mm
    zyx = np.argwhere(mask)
    lo = sample_volume.index_to_patient(zyx.min(axis=0))
    hi = sample_volume.index_to_patient(zyx.max(axis=0))
    box_lo, box_hi = np.minimum(lo, hi), np.maximum(lo, hi)
    assert np.all(mesh.vertices.min(axis=0) >= box_lo - 6) and np.all(mesh.vertices.max(axis=0) <= box_hi + 6)


def test_speckled_lesion_mesh_keeps_the_mask_volume():
    # GGO from a voxel classifier is speckled: 35 % of the voxels of a 25 mm ball
    spacing = (5.0, 0.84, 0.84)
    shape = (16, 90, 90)
    rng = np.random.default_rng(1)
    speckle = _ball(shape, (7.5, 44.5, 44.5), 25.0, spacing) & (rng.random(shape) < 0.35)
    labels = np.where(speckle, Label.GGO, 0).astype(np.uint8)
    volume = Volume(hu=np.zeros(shape, np.int16), spacing_zyx=spacing)
    ggo = M.meshes_for(labels, volume)[1]
    assert ggo.volume_ml() * 1000 == pytest.approx(speckle.sum() * np.prod(spacing), rel=0.10)
    # contoured at 0.5 the same speckle all but vanishes: why lesions use the volume level
    naive = M.mesh_from_mask(speckle, spacing, smooth_iterations=0)
    assert naive.volume_ml() < 0.6 * ggo.volume_ml()


@pytest.fixture(scope="module")
def phantom():
    """Two 'lungs' with a GGO ball in the patient's left lung (+x in LPS) and a consolidation in the right."""
    spacing = (2.5, 1.0, 1.0)
    shape = (40, 80, 120)
    volume = Volume(hu=np.zeros(shape, np.int16), spacing_zyx=spacing, origin_xyz=(-60.0, -40.0, -50.0))
    labels = np.zeros(shape, np.uint8)
    labels[_ball(shape, (20, 40, 30), 28.0, spacing)] = Label.HEALTHY_LUNG  # right lung (low x)
    labels[_ball(shape, (20, 40, 90), 28.0, spacing)] = Label.HEALTHY_LUNG  # left lung
    labels[_ball(shape, (20, 40, 95), 12.0, spacing)] = Label.GGO
    labels[_ball(shape, (18, 40, 28), 8.0, spacing)] = Label.CONSOLIDATION
    return volume, labels, M.meshes_for(labels, volume)


def test_glb_holds_three_coloured_meshes_in_lps_mm(phantom, tmp_path):
    volume, labels, meshes = phantom
    path = M.write_glb(meshes, tmp_path / "lungs_3d.glb")
    gltf, read = read_glb(path)
    assert gltf["asset"]["version"] == "2.0"
    assert [m["name"] for m in gltf["meshes"]] == ["lung", "ggo", "consolidation"]
    colours = {m["name"]: m["pbrMetallicRoughness"]["baseColorFactor"] for m in gltf["materials"]}
    assert colours["lung"][3] < 0.5 and colours["ggo"][3] == 1.0
    assert np.allclose(np.array(colours["ggo"][:3]) * 255, [255, 210, 0], atol=1)
    assert next(m for m in gltf["materials"] if m["name"] == "lung")["alphaMode"] == "BLEND"
    for mesh in meshes:
        vertices, faces = read[mesh.name]
        assert np.allclose(vertices, mesh.vertices, atol=1e-3)  # float32 LPS mm
        assert np.array_equal(faces, mesh.faces)
        assert S.mesh_volume_mm3(vertices, faces) / 1000 == pytest.approx(mesh.volume_ml(), rel=1e-4)
        acc = gltf["accessors"][next(m for m in gltf["meshes"] if m["name"] == mesh.name)["primitives"][0]["attributes"]["POSITION"]]
        assert np.allclose(acc["min"], vertices.min(axis=0), atol=1e-3) and np.allclose(acc["max"], vertices.max(axis=0), atol=1e-3)
    # the root node turns LPS mm into glTF metres with y superior and z anterior
    root = next(n for n in gltf["nodes"] if n["name"] == "patient_LPS_mm")
    matrix = np.array(root["matrix"]).reshape(4, 4).T
    assert np.allclose(matrix[:3, :3] @ [0, 0, 1000], [0, 1, 0]) and np.allclose(matrix[:3, :3] @ [0, -1000, 0], [0, 0, 1])
    assert len(path.read_bytes()) % 4 == 0


def test_stl_files_round_trip(phantom, tmp_path):
    _, _, meshes = phantom
    files = M.write_mesh_files(meshes, tmp_path)
    assert set(files) == {"mesh_glb", "mesh_stl_lung", "mesh_stl_ggo", "mesh_stl_consolidation"}
    for mesh in meshes:
        tri = read_stl(files[f"mesh_stl_{mesh.name}"])
        assert len(tri) == len(mesh.faces)
        volume = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6 / 1000
        assert volume == pytest.approx(mesh.volume_ml(), rel=1e-4)


def test_empty_structures_still_give_valid_files(tmp_path):
    volume = Volume(hu=np.zeros((6, 20, 20), np.int16), spacing_zyx=(1.0, 1.0, 1.0))
    labels = np.zeros((6, 20, 20), np.uint8)
    labels[1:5, 5:15, 5:15] = Label.HEALTHY_LUNG
    meshes = M.meshes_for(labels, volume)
    assert [m.empty for m in meshes] == [False, True, True]
    files = M.write_mesh_files(meshes, tmp_path)
    gltf, read = read_glb(files["mesh_glb"])
    assert list(read) == ["lung"]
    assert len(read_stl(files["mesh_stl_ggo"])) == 0
    nothing = M.write_glb([], tmp_path / "none.glb")
    assert read_glb(nothing)[1] == {}
    assert M.render_png([]).shape[2] == 3


def _khronos_validator() -> tuple[str, Path]:
    """node and the gltf-validator npm module that `make setup` installs into .tools/ (skip without them)."""
    node = shutil.which("node")
    modules = Path(__file__).resolve().parents[1] / ".tools" / "node_modules"
    if node is None or not (modules / "gltf-validator").is_dir():
        pytest.skip("the Khronos glTF validator is not installed (make setup installs it with npm into .tools/)")
    return node, modules


def test_glb_files_pass_the_khronos_gltf_validator(phantom, tmp_path):
    node, modules = _khronos_validator()
    _, _, meshes = phantom
    files = [M.write_glb(meshes, tmp_path / "lungs_3d.glb"), M.write_glb(meshes[:1], tmp_path / "lung_only.glb"),
             M.write_glb([], tmp_path / "none.glb")]
    script = Path(__file__).with_name("gltf_validate.js")
    run = subprocess.run([node, str(script), *map(str, files)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "NODE_PATH": str(modules)})
    assert run.returncode == 0, run.stderr
    reports = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(reports) == 3
    for report in reports:
        assert report["errors"] == 0 and report["warnings"] == 0, report


def test_render_is_an_anterior_view(phantom, tmp_path):
    _, _, meshes = phantom
    rgb = M.render_png(meshes, tmp_path / "render_3d.png", title=M.RENDER_TITLE)
    assert (tmp_path / "render_3d.png").stat().st_size > 10_000
    assert rgb.std() > 20  # not blank
    view = rgb[int(0.12 * rgb.shape[0]) :].astype(int)  # below the title and the legend
    r, g, b = (view[..., k] for k in range(3))
    warm = (r > b + 50) & (g > b + 10)  # lesion colours seen through the bluish lung
    yellow = warm & (abs(r - g) < 30)  # GGO
    orange = warm & (r - g > 40)  # consolidation
    bluish = (b > r + 20) & (b > 150)  # the see-through lung
    assert yellow.sum() > 500 and orange.sum() > 100 and bluish.sum() > 5000
    # patient's left (+x, the GGO) on the image right, patient's right (the consolidation) on the image left
    width = view.shape[1]
    assert np.nonzero(yellow)[1].mean() > width / 2 > np.nonzero(orange)[1].mean()
