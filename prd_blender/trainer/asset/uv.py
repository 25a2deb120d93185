"""UV unwrapping (xatlas) and MikkTSpace-style per-vertex tangents.

UV convention everywhere in ``asset``: Blender's, (0, 0) at the bottom-left of the image, v up; texel
(row r, column c) of an H x W image has its centre at u = (c + 0.5) / W, v = 1 - (r + 0.5) / H. The glTF
writer flips v (t = 1 - v) because glTF's origin is the top-left.

Tangents follow MikkTSpace (what Blender computes for its Normal Map node and glTF importers/exporters use):
per face corner, the UV-gradient tangent projected onto the plane of the vertex normal and normalised,
weighted by the corner angle, summed per vertex and normalised; handedness w = +1 when the face's UV area
is positive (bitangent = w * cross(normal, tangent)). Deviations from the reference implementation:
- Mikk splits a vertex whose faces disagree in UV handedness, or whose tangent directions differ by more than
  its angular threshold; we keep one tangent per vertex and take the majority handedness. xatlas charts are
  never mirrored internally, so handedness only changes across seams, where vertices are split anyway.
- Mikk also treats degenerate UV triangles specially; we give them zero weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .surface import Mesh


@dataclass
class UVMesh:
    """A mesh whose vertices are split at UV seams; ``source`` maps each vertex to the unwrapped mesh's."""

    vertices: np.ndarray  # (V, 3)
    faces: np.ndarray  # (F, 3) int64
    normals: np.ndarray  # (V, 3) unit
    uvs: np.ndarray  # (V, 2) in [0, 1], Blender convention (v up)
    tangents: np.ndarray  # (V, 4) unit xyz + handedness w (+1 / -1)
    source: np.ndarray  # (V,) int64


def padding_for(texture_size: int) -> int:
    """Gutter between charts in texels: grows with the resolution so that mip levels down to about
    1/64 of the size do not bleed between charts (2 px at 512, 4 at 1024, 8 at 2048)."""
    return max(2, texture_size // 256)


def unwrap(mesh: Mesh, texture_size: int = 1024, fast: bool = True) -> UVMesh:
    """Charts and packing with xatlas into one ``texture_size`` atlas; texel density is uniform over the
    surface (xatlas picks the texels-per-unit that fills the atlas)."""
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(mesh.vertices.astype(np.float32), mesh.faces.astype(np.uint32), mesh.normals.astype(np.float32))
    co = xatlas.ChartOptions()
    if fast:  # fewer chart-growing iterations: much faster on 100k+ faces, slightly more charts
        co.max_iterations = 1
    po = xatlas.PackOptions()
    po.resolution = int(texture_size)
    po.padding = padding_for(texture_size)
    po.bilinear = True
    atlas.generate(co, po)
    if atlas.atlas_count != 1:
        raise RuntimeError(f"xatlas produced {atlas.atlas_count} atlases; expected one")
    vmap, idx, uvs = atlas[0]
    vmap = vmap.astype(np.int64)
    faces = idx.astype(np.int64)
    verts = mesh.vertices[vmap]
    normals = mesh.normals[vmap]
    uvs = np.clip(uvs.astype(np.float64), 0.0, 1.0)
    return UVMesh(verts, faces, normals, uvs, mikk_tangents(verts, faces, normals, uvs), vmap)


def mikk_tangents(verts: np.ndarray, faces: np.ndarray, normals: np.ndarray, uvs: np.ndarray) -> np.ndarray:
    """Per-vertex tangents (V, 4) the MikkTSpace way (see the module docstring for the deviations)."""
    p = verts[faces]  # (F, 3, 3)
    t = uvs[faces]  # (F, 3, 2)
    e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    d1, d2 = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
    area_uv = d1[:, 0] * d2[:, 1] - d2[:, 0] * d1[:, 1]
    ok = np.abs(area_uv) > 1e-14
    # Mikk's face tangent: the direction of increasing u, scaled by the sign of the UV area.
    tface = e1 * d2[:, 1:2] - e2 * d1[:, 1:2]
    tface *= np.where(area_uv < 0, -1.0, 1.0)[:, None]
    orient = np.where(area_uv > 0, 1.0, -1.0)
    nv = len(verts)
    acc = np.zeros((nv, 3))
    sign_acc = np.zeros(nv)
    for c in range(3):
        vi = faces[:, c]
        n = normals[vi]
        tp = tface - n * np.einsum("ij,ij->i", n, tface)[:, None]
        tp /= np.maximum(np.linalg.norm(tp, axis=1, keepdims=True), 1e-20)
        a = p[:, (c + 1) % 3] - p[:, c]
        b = p[:, (c + 2) % 3] - p[:, c]
        a -= n * np.einsum("ij,ij->i", n, a)[:, None]
        b -= n * np.einsum("ij,ij->i", n, b)[:, None]
        cosang = np.einsum("ij,ij->i", a, b) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
        w = np.arccos(np.clip(cosang, -1, 1)) * ok
        np.add.at(acc, vi, tp * w[:, None])
        np.add.at(sign_acc, vi, orient * w)
    # Gram-Schmidt against the vertex normal again (the sum of projected tangents already is, up to rounding).
    acc -= normals * np.einsum("ij,ij->i", normals, acc)[:, None]
    norm = np.linalg.norm(acc, axis=1, keepdims=True)
    fallback = _any_perpendicular(normals)
    tan = np.where(norm > 1e-12, acc / np.maximum(norm, 1e-30), fallback)
    w = np.where(sign_acc < 0, -1.0, 1.0)
    return np.concatenate([tan, w[:, None]], 1)


def _any_perpendicular(n: np.ndarray) -> np.ndarray:
    ref = np.where(np.abs(n[:, :1]) < 0.9, np.array([[1.0, 0, 0]]), np.array([[0, 1.0, 0]]))
    t = np.cross(n, ref)
    return t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-20)


def uv_overlap_fraction(uvmesh: UVMesh, size: int = 512) -> float:
    """Fraction of covered texels that more than one triangle claims (0 for a valid atlas, up to
    edge-sharing rounding). Texels are counted at their centres, so shared edges do not double count."""
    from .bake import rasterize_uv

    tri, _, count = rasterize_uv(uvmesh.uvs, uvmesh.faces, size, size)
    covered = (tri >= 0).sum()
    return float((count > 1).sum() / max(covered, 1))
