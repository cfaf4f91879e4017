"""Mesh files: ``lungs_3d.glb`` (glTF 2.0 binary, LPS mm under a root node that turns them into glTF's
metres, Y up) and one binary ``<structure>.stl`` per structure in LPS mm."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from coviax.export.mesh.surface import STRUCTURES, Mesh, vertex_normals

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
        materials.append(_material(mesh.name, list(colours.get(mesh.name, (0.8, 0.8, 0.8, 1.0)))))
        gl_meshes.append({"name": mesh.name, "primitives": [{
            "attributes": {"POSITION": p_acc, "NORMAL": n_acc}, "indices": i_acc, "material": len(materials) - 1}],
            "extras": {"volume_ml": round(mesh.volume_ml(), 3)}})
        nodes.append({"name": mesh.name, "mesh": len(gl_meshes) - 1})
    while len(buffer) % 4:
        buffer.append(0)
    gltf = _gltf_document(nodes, gl_meshes, materials, accessors, views, len(buffer))
    path = Path(path)
    path.write_bytes(_glb(gltf, bytes(buffer)))
    return path


def _material(name: str, rgba: list) -> dict:
    material = {"name": name, "doubleSided": rgba[3] < 1.0,
                "pbrMetallicRoughness": {"baseColorFactor": rgba, "metallicFactor": 0.0, "roughnessFactor": 0.8}}
    if rgba[3] < 1.0:
        material["alphaMode"] = "BLEND"
    return material


def _gltf_document(nodes: list, gl_meshes: list, materials: list, accessors: list, views: list,
                   buffer_length: int) -> dict:
    """The glTF JSON: a root node that maps patient LPS mm to glTF metres, the structures below it."""
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
        "buffers": [{"byteLength": buffer_length}],
        "extras": {"units": "vertex data in patient LPS millimetres; root node maps to metres, Y superior, Z anterior",
                   "notice": "Research use only - not a medical device"},
    }
    if not nodes:  # glTF forbids empty top-level arrays (the Khronos validator's EMPTY_ENTITY): leave them out
        del gltf["meshes"], gltf["materials"], gltf["accessors"], gltf["bufferViews"], gltf["buffers"]
    return gltf


def _glb(gltf: dict, buffer: bytes) -> bytes:
    """The GLB container: header, the JSON chunk (space-padded) and the binary chunk when there is one."""
    js = json.dumps(gltf, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 4)
    chunks = struct.pack("<II", len(js), 0x4E4F534A) + js
    if buffer:
        chunks += struct.pack("<II", len(buffer), 0x004E4942) + buffer
    return struct.pack("<III", 0x46546C67, 2, 12 + len(chunks)) + chunks


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


def write_mesh_files(meshes: list[Mesh], out_dir: str | Path) -> dict[str, Path]:
    """``lungs_3d.glb`` and one ``<structure>.stl`` per mesh; returns {artifact name: path}."""
    out = Path(out_dir)
    artifacts = {"mesh_glb": write_glb(meshes, out / "lungs_3d.glb")}
    for mesh in meshes:
        artifacts[f"mesh_stl_{mesh.name}"] = write_stl(mesh, out / f"{mesh.name}.stl")
    return artifacts
