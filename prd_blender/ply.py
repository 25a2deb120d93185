"""Read the trainer's Gaussian PLY with numpy only (no torch, no bpy), for the Blender-side preview.

Format: docs/handoff.md (binary little-endian, standard 3DGS fields, PBR fields appended later).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
SH_C0 = 0.28209479177387814  # the degree-0 spherical-harmonic basis constant


class PlyError(ValueError):
    """The file is not a PLY this reader understands; the message names the file."""


def _read_header(fh, path: Path) -> tuple[str | None, list[tuple[str, int, list[list[str]]]]]:
    """Parse a PLY header up to ``end_header``: the format and the elements as (name, count, properties),
    each property the words after ``property`` (e.g. ``["float", "x"]`` or ``["list", "uchar", "int", "i"]``)."""
    if fh.readline().strip() != b"ply":
        raise PlyError(f"{path} is not a PLY file")
    fmt, elements = None, []
    while True:
        raw = fh.readline()
        if not raw:
            raise PlyError(f"{path}: header has no end_header")
        words = raw.decode("ascii", errors="replace").split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "end_header":
            return fmt, elements
        if words[0] == "format":
            fmt = words[1]
        elif words[0] == "element":
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property" and elements:
            elements[-1][2].append(words[1:])


def read_vertices(path: str | Path) -> np.ndarray:
    """The ``vertex`` element of a binary PLY as a numpy structured array (one field per property)."""
    path = Path(path)
    with open(path, "rb") as fh:
        fmt, elements = _read_header(fh, path)
        if not elements or elements[0][0] != "vertex":
            raise PlyError(f"{path}: the vertex element must come first")
        _, count, props = elements[0]
        fields = []
        for prop in props:
            if prop[0] == "list":
                raise PlyError(f"{path}: list properties in the vertex element are not supported")
            if prop[0] not in _PLY_TYPES:
                raise PlyError(f"{path}: unknown property type {prop[0]!r}")
            fields.append((prop[1], _PLY_TYPES[prop[0]]))
        if fmt not in ("binary_little_endian", "binary_big_endian"):
            raise PlyError(f"{path}: only binary PLY is supported (found {fmt!r})")
        order = "<" if fmt == "binary_little_endian" else ">"
        dtype = np.dtype([(name, order + t) for name, t in fields])
        data = np.fromfile(fh, dtype=dtype, count=count)
    if len(data) != count:
        raise PlyError(f"{path} is truncated: {len(data)} of {count} vertices")
    return data


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    c = np.clip(c, 0.0, 1.0)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def gaussian_attributes(v: np.ndarray) -> dict[str, np.ndarray]:
    """Per-Gaussian preview data: positions, colour (linear), opacity, radius and PBR fields if present.

    The SH DC colour is in the training images' display (sRGB) space; Blender colour attributes are
    scene-linear, hence the conversion.
    """
    names = set(v.dtype.names or ())
    for need in ("x", "y", "z"):
        if need not in names:
            raise PlyError(f"PLY has no {need!r} property")
    out: dict[str, np.ndarray] = {"position": np.stack([v["x"], v["y"], v["z"]], 1).astype(np.float32)}
    if {"f_dc_0", "f_dc_1", "f_dc_2"} <= names:
        dc = np.stack([v["f_dc_0"], v["f_dc_1"], v["f_dc_2"]], 1).astype(np.float32)
        out["color"] = srgb_to_linear(0.5 + SH_C0 * dc).astype(np.float32)
    if "opacity" in names:
        out["opacity"] = _sigmoid(v["opacity"].astype(np.float32))
    if {"scale_0", "scale_1", "scale_2"} <= names:
        scales = np.exp(np.stack([v["scale_0"], v["scale_1"], v["scale_2"]], 1).astype(np.float32))
        out["radius"] = scales.max(1)
    # PBR fields the later stages append, stored already activated in [0, 1] (Gaussians.save_ply);
    # albedo is a physical (linear) quantity, so no colour-space conversion.
    if {"albedo_0", "albedo_1", "albedo_2"} <= names:
        out["albedo"] = np.clip(np.stack([v["albedo_0"], v["albedo_1"], v["albedo_2"]], 1), 0, 1).astype(np.float32)
    for key in ("roughness", "metallic", "progress"):
        if key in names:
            out[key] = np.clip(v[key], 0, 1).astype(np.float32)
    return out


def read_mesh(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The vertex element (structured array) and the triangles (F, 3) of a binary little-endian triangle PLY.

    Format: ``mesh.ply`` of ``prd mesh`` (docs/handoff.md): float vertex properties, then a face element
    with ``property list uchar int vertex_indices`` holding only triangles, which lets numpy read the
    faces as fixed-size records instead of looping over them in Python.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        fmt, elements = _read_header(fh, path)
        if fmt != "binary_little_endian":
            raise PlyError(f"{path}: only binary little-endian PLY is supported (found {fmt!r})")
        names = [e[0] for e in elements]
        if names not in (["vertex", "face"], ["vertex"]):
            raise PlyError(f"{path}: expected a vertex and a face element, found {names}")
        _, nv, vprops = elements[0]
        fields = []
        for prop in vprops:
            if prop[0] not in _PLY_TYPES:
                raise PlyError(f"{path}: unsupported vertex property type {prop[0]!r}")
            fields.append((prop[1], "<" + _PLY_TYPES[prop[0]]))
        nf, face_list = (elements[1][1], elements[1][2][0][:3] if elements[1][2] else None) if len(elements) > 1 \
            else (0, None)
        if not nf or not face_list or face_list[0] != "list" or face_list[1] not in _PLY_TYPES \
                or face_list[2] not in _PLY_TYPES:
            raise PlyError(f"{path}: no face list (not a mesh)")
        vertices = np.fromfile(fh, dtype=np.dtype(fields), count=nv)
        face_dtype = np.dtype([("n", "<" + _PLY_TYPES[face_list[1]]), ("i", "<" + _PLY_TYPES[face_list[2]], (3,))])
        faces = np.fromfile(fh, dtype=face_dtype, count=nf)
    if len(vertices) != nv or len(faces) != nf:
        raise PlyError(f"{path} is truncated")
    if not (faces["n"] == 3).all():
        raise PlyError(f"{path}: only triangle meshes are supported")
    tris = faces["i"].astype(np.int64)
    if nv and (tris.min() < 0 or tris.max() >= nv):
        raise PlyError(f"{path}: face indices out of range")
    return vertices, tris
