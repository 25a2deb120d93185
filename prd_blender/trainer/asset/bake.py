"""Texture baking: each texel's 3D point is back-projected into every rendered view that sees it (depth test
against the view's splatted depth), and the views' splatted material and normal maps are averaged there,
weighted by cos^2 of the view angle and the pixel coverage. Texels no view sees take the nearest opaque
Gaussian's material. Then the charts are dilated across the gutters so that bilinear/mip sampling at UV
seams never reads the empty background.

Why views rather than nearest Gaussians: the rendered maps are exactly what the training losses saw (the
alpha-blended mixture along the ray), whereas the nearest Gaussian can be a hidden interior one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from numba import njit, prange
from PIL import Image

from .surface import FEATURES, ViewStack, extract_surface, validate_gaussians
from .uv import UVMesh, padding_for, unwrap

TEXTURE_SIZES = (512, 1024, 2048)
# Output files (relative to the run folder) and their manifest roles.
FILES = {
    "mesh": "mesh.ply",
    "texture_albedo": "mesh_albedo.png",
    "texture_orm": "mesh_orm.png",
    "texture_normal": "mesh_normal.png",
    "glb": "mesh.glb",
}
MAX_NORMAL_DEVIATION_DEG = 75.0  # a baked normal further than this from the mesh normal is noise: use the mesh's
# Depth-test tolerances (times ``tol``) tried in turn for texels no view passed yet. Where the mesh bulges a
# few voxels out of the Gaussians' surface, the strict test rejects every view, and such a texel used to take the
# mesh's own, bumpy normal: on the glossy object 5 % of the visible pixels, 22 deg off, which Cycles shows as
# speckles in the reflections (docs/benchmarks.md, mesh run 12).
RETRY_TOLERANCES = (2.0, 4.0)


# ------------------------------------------------------------------------------------ UV rasterisation


@njit(cache=True)
def _raster_uv(uvs, faces, W, H, tri, bary, count):  # pragma: no cover - numba
    for f in range(faces.shape[0]):
        a, b, c = faces[f, 0], faces[f, 1], faces[f, 2]
        # texel-centre coordinates: x = u W - 0.5, y = (1 - v) H - 0.5
        x0, y0 = uvs[a, 0] * W - 0.5, (1.0 - uvs[a, 1]) * H - 0.5
        x1, y1 = uvs[b, 0] * W - 0.5, (1.0 - uvs[b, 1]) * H - 0.5
        x2, y2 = uvs[c, 0] * W - 0.5, (1.0 - uvs[c, 1]) * H - 0.5
        den = (y1 - y2) * (x0 - x2) + (x2 - x1) * (y0 - y2)
        if abs(den) < 1e-14:
            continue
        xmin = max(int(np.floor(min(x0, x1, x2))), 0)
        xmax = min(int(np.ceil(max(x0, x1, x2))), W - 1)
        ymin = max(int(np.floor(min(y0, y1, y2))), 0)
        ymax = min(int(np.ceil(max(y0, y1, y2))), H - 1)
        for y in range(ymin, ymax + 1):
            for x in range(xmin, xmax + 1):
                l0 = ((y1 - y2) * (x - x2) + (x2 - x1) * (y - y2)) / den
                l1 = ((y2 - y0) * (x - x2) + (x0 - x2) * (y - y2)) / den
                l2 = 1.0 - l0 - l1
                if l0 >= -1e-9 and l1 >= -1e-9 and l2 >= -1e-9:
                    # a texel centre on a shared edge goes to the first triangle; only strictly interior
                    # hits are counted, so that ``count`` > 1 means overlapping charts, not shared edges
                    interior = l0 > 1e-9 and l1 > 1e-9 and l2 > 1e-9
                    if interior:
                        count[y, x] += 1
                    if tri[y, x] < 0 or interior:
                        tri[y, x] = f
                        bary[y, x, 0] = l0
                        bary[y, x, 1] = l1
                        bary[y, x, 2] = l2


def rasterize_uv(uvs: np.ndarray, faces: np.ndarray, width: int, height: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which triangle covers each texel centre, and where: (tri (H, W) int64, -1 if none; bary (H, W, 3);
    count (H, W), how many triangles hold the texel centre strictly inside: > 1 only where charts overlap)."""
    tri = np.full((height, width), -1, np.int64)
    bary = np.zeros((height, width, 3), np.float64)
    cnt = np.zeros((height, width), np.int32)
    _raster_uv(np.ascontiguousarray(uvs, np.float64), np.ascontiguousarray(faces, np.int64), width, height,
               tri, bary, cnt)
    return tri, bary, cnt


# ------------------------------------------------------------------------------------ gathering


@njit(parallel=True, cache=True)
def _gather(P, N, viewmats, Ks, sizes, depth, cov, feats, tol, out, wout):  # pragma: no cover - numba
    V = viewmats.shape[0]
    C = feats.shape[3]
    for t in prange(P.shape[0]):
        px, py, pz = P[t, 0], P[t, 1], P[t, 2]
        for v in range(V):
            M = viewmats[v]
            z = M[2, 0] * px + M[2, 1] * py + M[2, 2] * pz + M[2, 3]
            if z <= 1e-6:
                continue
            # camera centre: -R^T t; view direction from the point towards the camera
            cx = -(M[0, 0] * M[0, 3] + M[1, 0] * M[1, 3] + M[2, 0] * M[2, 3])
            cy = -(M[0, 1] * M[0, 3] + M[1, 1] * M[1, 3] + M[2, 1] * M[2, 3])
            cz = -(M[0, 2] * M[0, 3] + M[1, 2] * M[1, 3] + M[2, 2] * M[2, 3])
            dx, dy, dz = cx - px, cy - py, cz - pz
            dn = np.sqrt(dx * dx + dy * dy + dz * dz)
            cosv = (dx * N[t, 0] + dy * N[t, 1] + dz * N[t, 2]) / dn
            if cosv < 0.1:  # grazing or back-facing
                continue
            x = M[0, 0] * px + M[0, 1] * py + M[0, 2] * pz + M[0, 3]
            y = M[1, 0] * px + M[1, 1] * py + M[1, 2] * pz + M[1, 3]
            u = Ks[v, 0, 0] * x / z + Ks[v, 0, 2]
            w = Ks[v, 1, 1] * y / z + Ks[v, 1, 2]
            Wv, Hv = sizes[v, 0], sizes[v, 1]
            if u < 0.5 or w < 0.5 or u > Wv - 0.5 or w > Hv - 0.5:
                continue
            iu, iw = int(u), int(w)
            if cov[v, iw, iu] < 0.5 or abs(depth[v, iw, iu] - z) > tol:  # occluded or off the surface
                continue
            # bilinear over premultiplied features: background pixels (coverage 0) add nothing
            fu, fw = u - 0.5, w - 0.5
            u0, w0 = int(fu), int(fw)
            au, aw = fu - u0, fw - w0
            u1, w1 = min(u0 + 1, Wv - 1), min(w0 + 1, Hv - 1)
            c = ((1 - au) * (1 - aw) * cov[v, w0, u0] + au * (1 - aw) * cov[v, w0, u1]
                 + (1 - au) * aw * cov[v, w1, u0] + au * aw * cov[v, w1, u1])
            if c < 1e-3:
                continue
            wt = cosv * cosv
            for k in range(C):
                f = ((1 - au) * (1 - aw) * feats[v, w0, u0, k] + au * (1 - aw) * feats[v, w0, u1, k]
                     + (1 - au) * aw * feats[v, w1, u0, k] + au * aw * feats[v, w1, u1, k])
                out[t, k] += wt * f / c
            wout[t] += wt


def gather(points: np.ndarray, normals: np.ndarray, views: ViewStack, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """View-weighted sums of the rendered features at surface points (M, 3): (M, C) for the views' C channels,
    and the weights (M,)."""
    out = np.zeros((len(points), views.feats.shape[3]), np.float64)
    w = np.zeros(len(points), np.float64)
    _gather(np.ascontiguousarray(points, np.float64), np.ascontiguousarray(normals, np.float64), views.viewmats,
            views.Ks, views.sizes, views.depth, views.coverage, views.feats, float(tol), out, w)
    return out, w


# ------------------------------------------------------------------------------------ dilation


def dilate(img: np.ndarray, filled: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Grow the filled texels outwards ``steps`` times, each new texel the mean of its filled 8-neighbours."""
    img = img.copy()
    filled = filled.copy()
    H, W = filled.shape
    for _ in range(steps):
        if filled.all():
            break
        acc = np.zeros_like(img)
        cnt = np.zeros((H, W), np.float64)
        fv = np.where(filled[..., None], img, 0.0)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dy == 0 and dx == 0:
                    continue
                ys = slice(max(dy, 0), H + min(dy, 0))
                yd = slice(max(-dy, 0), H + min(-dy, 0))
                xs = slice(max(dx, 0), W + min(dx, 0))
                xd = slice(max(-dx, 0), W + min(-dx, 0))
                acc[yd, xd] += fv[ys, xs]
                cnt[yd, xd] += filled[ys, xs]
        new = (~filled) & (cnt > 0)
        img[new] = acc[new] / cnt[new][:, None]
        filled = filled | new
    return img, filled


# ------------------------------------------------------------------------------------ baking


def _srgb_encode(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def texel_surface(uvmesh: UVMesh, size: int) -> tuple[np.ndarray, ...]:
    """The surface under each used texel of a (size, size) texture: mask (size, size), then per used texel its
    triangle's vertex indices (M, 3), barycentrics (M, 3, 1), point (M, 3) and unit interpolated normal (M, 3)."""
    tri, bary, _ = rasterize_uv(uvmesh.uvs, uvmesh.faces, size, size)
    mask = tri >= 0
    f = uvmesh.faces[tri[mask]]
    b = bary[mask][..., None]
    P = (uvmesh.vertices[f] * b).sum(1)
    N = (uvmesh.normals[f] * b).sum(1)
    N /= np.maximum(np.linalg.norm(N, axis=1, keepdims=True), 1e-20)
    return mask, f, b, P, N


def bake_textures(uvmesh: UVMesh, views: ViewStack, texture_size: int, tol: float,
                  fallback: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Bake (size, size) maps: ``albedo`` (linear RGB), ``roughness``, ``metallic``, ``normal`` (tangent space,
    unit), plus ``mask`` (texels inside a triangle) and ``seen`` (texels some view saw, at the depth-test
    tolerance ``tol`` or, failing that, at ``RETRY_TOLERANCES`` times it).

    ``fallback``: (points (G, 3), material (G, 5)) of opaque Gaussians for texels no view sees.
    """
    S = int(texture_size)
    mask, f, b, P, N = texel_surface(uvmesh, S)
    T = (uvmesh.tangents[f, :3] * b).sum(1)
    sign = uvmesh.tangents[f[:, 0], 3]
    feats, w = gather(P, N, views, tol)
    for k in RETRY_TOLERANCES:
        todo = np.nonzero(w <= 0)[0]
        if not len(todo):
            break
        feats[todo], w[todo] = gather(P[todo], N[todo], views, k * tol)
    seen = w > 0
    vals = np.zeros((len(P), FEATURES))
    vals[seen] = feats[seen] / w[seen, None]
    if (~seen).any():
        if fallback is not None and len(fallback[0]):
            from scipy.spatial import cKDTree

            _, nn = cKDTree(fallback[0]).query(P[~seen])
            vals[~seen, :5] = fallback[1][nn]
        else:
            vals[~seen, :5] = vals[seen, :5].mean(0) if seen.any() else 0.5
        vals[~seen, 5:] = N[~seen]
    # Tangent-space normal: solve n_world = x T + y B + z N with B = sign * cross(N, T), as the Normal Map
    # node (and glTF viewers) compose it from the interpolated vertex frame.
    nw = vals[:, 5:8]
    nw /= np.maximum(np.linalg.norm(nw, axis=1, keepdims=True), 1e-20)
    bad = (np.einsum("ij,ij->i", nw, N) < np.cos(np.radians(MAX_NORMAL_DEVIATION_DEG))) | ~np.isfinite(nw).all(1)
    nw[bad] = N[bad]
    B = sign[:, None] * np.cross(N, T)
    frame = np.stack([T, B, N], axis=2)  # columns
    ok = np.abs(np.linalg.det(frame)) > 1e-8
    nts = np.tile([0.0, 0.0, 1.0], (len(P), 1))
    nts[ok] = np.linalg.solve(frame[ok], nw[ok][..., None])[..., 0]
    nts[:, 2] = np.maximum(nts[:, 2], 0.05)
    nts /= np.linalg.norm(nts, axis=1, keepdims=True)

    def image(x: np.ndarray, empty: np.ndarray) -> np.ndarray:
        img = np.zeros((S, S, x.shape[1]))
        img[mask] = x
        # dilate well past the gutter (charts are padding_for(S) texels apart), then a flat fill for mips
        img, filled = dilate(img, mask, 2 * padding_for(S) + 2)
        img[~filled] = empty
        return img

    albedo = image(np.clip(vals[:, :3], 0, 1), vals[:, :3].mean(0))
    rm = image(np.clip(vals[:, 3:5], 0, 1), vals[:, 3:5].mean(0))
    normal = image(nts, np.array([0.0, 0.0, 1.0]))
    normal /= np.maximum(np.linalg.norm(normal, axis=2, keepdims=True), 1e-20)
    seen_img = np.zeros((S, S), bool)
    seen_img[mask] = seen
    return {"albedo": albedo, "roughness": rm[..., 0], "metallic": rm[..., 1], "normal": normal, "mask": mask,
            "seen": seen_img}


def write_textures(maps: dict[str, np.ndarray], out: Path) -> dict[str, str]:
    """The three PNGs of DESIGN.md §4's glTF-friendly material: albedo (sRGB), ORM (Non-Color: R = 1 since
    no occlusion is baked, G roughness, B metallic, glTF's metallicRoughness layout), normal (Non-Color,
    OpenGL +Y, n * 0.5 + 0.5)."""
    S = maps["albedo"].shape[0]
    orm = np.stack([np.ones((S, S)), maps["roughness"], maps["metallic"]], -1)
    imgs = {
        "texture_albedo": _to_u8(_srgb_encode(maps["albedo"])),
        "texture_orm": _to_u8(orm),
        "texture_normal": _to_u8(maps["normal"] * 0.5 + 0.5),
    }
    for role, arr in imgs.items():
        path = out / FILES[role]
        tmp = path.with_name(path.name + ".tmp")
        Image.fromarray(arr, "RGB").save(tmp, format="PNG")
        tmp.replace(path)
    return {role: FILES[role] for role in imgs}


def bake_asset(out_dir: Path | str, quality: str = "standard", texture_size: int = 1024, *, device: str = "auto",
               **surface_overrides) -> dict:
    """Mesh + UVs + baked PBR textures + GLB from a finished run folder; adds them to its manifest.

    Returns a summary: file names by role, mesh statistics (faces, vertices, watertight ...), timings.
    ``surface_overrides`` go to ``extract_surface`` (``grid``, ``render``, ``faces``, ``extra_views``, ``max_views``,
    ``smooth``).
    """
    from ..outputs import OutputFolderError, read_manifest, update_manifest
    from ..raster import choose_backend
    from ..relight import camera_from_record
    from ..train.gaussians import Gaussians
    from .gltf import write_glb, write_ply
    from .surface import gaussian_features

    out = Path(out_dir)
    if texture_size not in TEXTURE_SIZES and not (64 <= texture_size <= 8192):
        raise ValueError(f"texture size {texture_size} out of range (use 512, 1024 or 2048)")
    manifest = read_manifest(out)
    files = manifest.get("files", {})
    if "gaussians" not in files or not (out / files["gaussians"]).is_file():
        raise OutputFolderError(f"{out} holds no Gaussians yet (point_cloud.ply is written when training ends)")
    timings: dict[str, float] = {}
    t = time.time()
    model = Gaussians.load_ply(out / files["gaussians"])
    cams = []
    if (out / "cameras.json").is_file():
        recs = json.loads((out / "cameras.json").read_text(encoding="utf-8"))["cameras"]
        cams = [camera_from_record(r) for r in recs]
    backend, _ = choose_backend(device)
    mesh, views, info = extract_surface(model, cams, quality, backend, **surface_overrides)
    timings["surface_s"] = time.time() - t
    t = time.time()
    uvmesh = unwrap(mesh, texture_size)
    timings["uv_s"] = time.time() - t
    t = time.time()
    with torch.no_grad():
        opaque = validate_gaussians(model)
        fb = (model.means.numpy()[opaque].astype(np.float64), gaussian_features(model).numpy()[opaque])
    maps = bake_textures(uvmesh, views, texture_size, tol=3.0 * info["voxel"], fallback=fb)
    written = write_textures(maps, out)
    timings["bake_s"] = time.time() - t
    t = time.time()
    write_ply(out / FILES["mesh"], uvmesh)
    write_glb(out / FILES["glb"], uvmesh, {r: out / FILES[r] for r in ("texture_albedo", "texture_orm",
                                                                       "texture_normal")})
    written.update(mesh=FILES["mesh"], glb=FILES["glb"])
    timings["write_s"] = time.time() - t
    summary = {
        "quality": quality, "texture_size": int(texture_size), **info,
        "uv_vertices": int(len(uvmesh.vertices)),
        "texels_seen": float(maps["seen"].sum() / max(maps["mask"].sum(), 1)),
        "texels_used": float(maps["mask"].mean()),
        "seconds": {k: round(v, 2) for k, v in timings.items()},
    }
    update_manifest(out, files=written, asset=summary)
    return {"files": written, **summary}
