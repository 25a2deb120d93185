"""Writers for the baked asset: a binary PLY with UVs (Blender world, Z up) and a self-contained GLB.

The GLB is written directly (the format is a JSON chunk and a binary chunk; no dependency needed). glTF is
Y up, so positions, normals and tangents are turned from Blender's Z up: (x, y, z) -> (x, z, -y), which is
exactly what Blender's glTF importer undoes. UVs are flipped (t = 1 - v) since glTF's UV origin is the top
left; tangents keep their handedness w because the flip and the axis turn are both applied consistently
(the exporter in Blender does the same).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from .uv import UVMesh

GLB_MAGIC = 0x46546C67
CHUNK_JSON = 0x4E4F534A
CHUNK_BIN = 0x004E4942
_Z_UP_TO_Y_UP = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])


def write_ply(path: Path, mesh: UVMesh) -> None:
    """Binary little-endian PLY: x y z nx ny nz s t per vertex (Blender's importer reads s/t as UVs), faces."""
    nv, nf = len(mesh.vertices), len(mesh.faces)
    vert = np.zeros(nv, dtype=[(k, "<f4") for k in ("x", "y", "z", "nx", "ny", "nz", "s", "t")])
    for i, k in enumerate("xyz"):
        vert[k] = mesh.vertices[:, i]
        vert["n" + k] = mesh.normals[:, i]
    vert["s"], vert["t"] = mesh.uvs[:, 0], mesh.uvs[:, 1]
    face = np.zeros(nf, dtype=[("n", "u1"), ("i", "<i4", (3,))])
    face["n"] = 3
    face["i"] = mesh.faces
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment prd_blender baked asset (world space, Z up)\n"
        f"element vertex {nv}\n" + "".join(f"property float {k}\n" for k in vert.dtype.names)
        + f"element face {nf}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(header.encode("ascii"))
        fh.write(vert.tobytes())
        fh.write(face.tobytes())
    tmp.replace(path)


def read_ply_columns(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every float vertex property by name ((V,) float64 each) and the triangles (F, 3) of a binary
    little-endian PLY with a ``list uchar int`` face list: our meshes and the benchmark's mesh.ply."""
    with open(path, "rb") as fh:
        if fh.readline().strip() != b"ply":
            raise ValueError(f"{path} is not a PLY file")
        nv = nf = 0
        props: list[str] = []
        element = ""
        while True:
            tok = fh.readline().decode("ascii").split()
            if not tok:
                continue
            if tok[0] == "format" and tok[1] != "binary_little_endian":
                raise ValueError(f"{path}: only binary little-endian PLY is supported")
            if tok[0] == "element":
                element = tok[1]
                if element == "vertex":
                    nv = int(tok[2])
                elif element == "face":
                    nf = int(tok[2])
            elif tok[0] == "property" and element == "vertex":
                if tok[1] != "float":
                    raise ValueError(f"{path}: vertex property {tok[-1]} is {tok[1]}, expected float")
                props.append(tok[2])
            elif tok[0] == "property" and element == "face" and tok[2:4] != ["uchar", "int"]:
                raise ValueError(f"{path}: face list must be 'list uchar int'")
            elif tok[0] == "end_header":
                break
        vert = np.frombuffer(fh.read(nv * 4 * len(props)), "<f4").reshape(nv, len(props))
        face = np.frombuffer(fh.read(nf * 13), dtype=[("n", "u1"), ("i", "<i4", (3,))])
    if (face["n"] != 3).any():
        raise ValueError(f"{path}: only triangle faces are supported")
    return {k: vert[:, i].astype(np.float64) for i, k in enumerate(props)}, face["i"].astype(np.int64)


def read_ply_mesh(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V, 3) and triangles (F, 3) of a PLY that ``read_ply_columns`` reads."""
    cols, faces = read_ply_columns(path)
    return np.stack([cols[k] for k in "xyz"], 1), faces


def _pad4(b: bytes, fill: bytes) -> bytes:
    return b + fill * (-len(b) % 4)


def write_glb(path: Path, mesh: UVMesh, textures: dict[str, Path]) -> None:
    """A GLB with one mesh, one metallic-roughness material, the three PNGs embedded.

    ``textures``: paths of the ``texture_albedo``, ``texture_orm`` and ``texture_normal`` PNGs.
    """
    pos = (mesh.vertices @ _Z_UP_TO_Y_UP.T).astype("<f4")
    nrm = (mesh.normals @ _Z_UP_TO_Y_UP.T).astype("<f4")
    tan = np.concatenate([mesh.tangents[:, :3] @ _Z_UP_TO_Y_UP.T, mesh.tangents[:, 3:]], 1).astype("<f4")
    uv = np.stack([mesh.uvs[:, 0], 1.0 - mesh.uvs[:, 1]], 1).astype("<f4")
    idx = mesh.faces.astype("<u4").ravel()
    blob = bytearray()
    views: list[dict] = []

    def add_view(data: bytes, target: int | None) -> int:
        blob.extend(b"\0" * (-len(blob) % 4))  # accessors need 4-byte alignment
        v = {"buffer": 0, "byteOffset": len(blob), "byteLength": len(data)}
        if target:
            v["target"] = target
        views.append(v)
        blob.extend(data)
        return len(views) - 1

    accessors = []

    def add_accessor(arr: np.ndarray, kind: str, ctype: int, target: int, minmax: bool = False) -> int:
        acc = {"bufferView": add_view(arr.tobytes(), target), "componentType": ctype,
               "count": int(arr.shape[0]) if arr.ndim > 1 else int(arr.size), "type": kind}
        if minmax:
            acc["min"] = arr.min(0).astype(float).tolist()
            acc["max"] = arr.max(0).astype(float).tolist()
        accessors.append(acc)
        return len(accessors) - 1

    attrs = {
        "POSITION": add_accessor(pos, "VEC3", 5126, 34962, minmax=True),
        "NORMAL": add_accessor(nrm, "VEC3", 5126, 34962),
        "TANGENT": add_accessor(tan, "VEC4", 5126, 34962),
        "TEXCOORD_0": add_accessor(uv, "VEC2", 5126, 34962),
    }
    indices = add_accessor(idx, "SCALAR", 5125, 34963)
    images = []
    for role in ("texture_albedo", "texture_orm", "texture_normal"):
        images.append({"bufferView": add_view(Path(textures[role]).read_bytes(), None), "mimeType": "image/png",
                       "name": role})
    doc = {
        "asset": {"version": "2.0", "generator": "prd_blender (PRD Gaussian inverse rendering)"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": "prd_asset"}],
        "meshes": [{"name": "prd_asset", "primitives": [
            {"attributes": attrs, "indices": indices, "material": 0, "mode": 4}]}],
        "materials": [{
            "name": "prd_material",
            "pbrMetallicRoughness": {
                "baseColorTexture": {"index": 0, "texCoord": 0},
                "metallicRoughnessTexture": {"index": 1, "texCoord": 0},
                "baseColorFactor": [1.0, 1.0, 1.0, 1.0], "metallicFactor": 1.0, "roughnessFactor": 1.0,
            },
            "normalTexture": {"index": 2, "texCoord": 0, "scale": 1.0},
        }],
        "samplers": [{"magFilter": 9729, "minFilter": 9987, "wrapS": 33071, "wrapT": 33071}],
        "textures": [{"source": i, "sampler": 0} for i in range(3)],
        "images": images,
        "accessors": accessors,
        "bufferViews": views,
        "buffers": [{"byteLength": len(_pad4(bytes(blob), b"\0"))}],
    }
    js = _pad4(json.dumps(doc, separators=(",", ":")).encode("utf-8"), b" ")
    bn = _pad4(bytes(blob), b"\0")
    total = 12 + 8 + len(js) + 8 + len(bn)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<III", GLB_MAGIC, 2, total))
        fh.write(struct.pack("<II", len(js), CHUNK_JSON) + js)
        fh.write(struct.pack("<II", len(bn), CHUNK_BIN) + bn)
    tmp.replace(path)


def read_glb(path: Path) -> tuple[dict, bytes]:
    """Parse a GLB into its JSON document and binary chunk (checks the header and chunk layout)."""
    data = Path(path).read_bytes()
    if len(data) < 20:
        raise ValueError(f"{path}: too short for a GLB")
    magic, version, total = struct.unpack_from("<III", data, 0)
    if magic != GLB_MAGIC or version != 2 or total != len(data):
        raise ValueError(f"{path}: not a glTF 2.0 binary (magic {magic:#x}, version {version}, length {total})")
    jlen, jtype = struct.unpack_from("<II", data, 12)
    if jtype != CHUNK_JSON:
        raise ValueError(f"{path}: first chunk is not JSON")
    doc = json.loads(data[20 : 20 + jlen])
    off = 20 + jlen
    binary = b""
    if off < len(data):
        blen, btype = struct.unpack_from("<II", data, off)
        if btype != CHUNK_BIN:
            raise ValueError(f"{path}: second chunk is not BIN")
        binary = data[off + 8 : off + 8 + blen]
    return doc, binary


def glb_accessor(doc: dict, binary: bytes, index: int) -> np.ndarray:
    """Decode one accessor of a GLB (float32 / uint32 / uint16 only; enough for our files)."""
    acc = doc["accessors"][index]
    view = doc["bufferViews"][acc["bufferView"]]
    dtype = {5126: "<f4", 5125: "<u4", 5123: "<u2"}[acc["componentType"]]
    width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}[acc["type"]]
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    arr = np.frombuffer(binary, dtype, acc["count"] * width, start)
    return arr.reshape(acc["count"], width) if width > 1 else arr
