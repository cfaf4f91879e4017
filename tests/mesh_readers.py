"""Readers of the mesh files that coviax.export.mesh writes, for the tests (the product writes them only)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np


def read_glb(path: str | Path) -> tuple[dict, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The JSON of a .glb written by :func:`write_glb` and its meshes as {name: (vertices, faces)}."""
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


def read_stl(path: str | Path) -> np.ndarray:
    """Triangles (m, 3, 3) of a binary STL."""
    data = Path(path).read_bytes()
    (count,) = struct.unpack_from("<I", data, 80)
    record = np.frombuffer(data, dtype=[("n", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")], count=count, offset=84)
    return record["v"].astype(np.float64)
