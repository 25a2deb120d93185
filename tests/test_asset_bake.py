"""UVs, baked textures and the GLB of a two-colour sphere of Gaussians (known albedo, roughness, metallic)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from prd_blender.trainer.asset import bake_asset
from prd_blender.trainer.asset.bake import bake_textures, rasterize_uv
from prd_blender.trainer.asset.bench import _read_uv_ply, render_textured
from prd_blender.trainer.asset.gltf import glb_accessor, read_glb
from prd_blender.trainer.asset.surface import FEATURES, Mesh, ViewStack, vertex_normals
from prd_blender.trainer.asset.synthetic import BLUE, RED, sphere_gaussians, write_run_folder
from prd_blender.trainer.asset.uv import UVMesh, mikk_tangents, unwrap, uv_overlap_fraction

SIZE = 256


@pytest.fixture(scope="module")
def baked(tmp_path_factory):
    out = write_run_folder(tmp_path_factory.mktemp("run"), sphere_gaussians(radius=0.5))
    summary = bake_asset(out, "preview", SIZE, device="cpu", grid=64, render=96, faces=3000, extra_views=16)
    return out, summary


def _srgb_to_linear(x):
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def test_manifest_and_files(baked):
    out, summary = baked
    files = json.loads((out / "manifest.json").read_text())["files"]
    for role in ("mesh", "texture_albedo", "texture_orm", "texture_normal", "glb"):
        assert (out / files[role]).is_file(), role
    assert files["gaussians"] == "point_cloud.ply"  # earlier roles kept
    assert summary["watertight"] and summary["texels_seen"] > 0.95


def test_uvs_in_range_without_overlap(baked):
    out, _ = baked
    v, f, uv = _read_uv_ply(out / "mesh.ply")
    assert uv.min() >= 0 and uv.max() <= 1
    m = UVMesh(v, f, np.zeros_like(v), uv, np.zeros((len(v), 4)), np.arange(len(v)))
    assert uv_overlap_fraction(m, 512) < 1e-3


def test_albedo_roughness_metallic_match(baked):
    out, _ = baked
    v, f, uv = _read_uv_ply(out / "mesh.ply")
    alb = _srgb_to_linear(np.asarray(Image.open(out / "mesh_albedo.png"), float) / 255)
    orm = np.asarray(Image.open(out / "mesh_orm.png"), float) / 255
    tri, bary, _ = rasterize_uv(uv, f, SIZE, SIZE)
    m = tri >= 0
    z = (v[f[tri[m]]][..., 2] * bary[m]).sum(1)
    top, bottom = alb[m][z > 0.1], alb[m][z < -0.1]
    assert np.abs(np.median(top, 0) - RED).max() < 0.03
    assert np.abs(np.median(bottom, 0) - BLUE).max() < 0.03
    assert (np.abs(top - RED).max(1) < 0.1).mean() > 0.95
    assert np.abs(orm[m][:, 0] - 1).max() < 1e-6
    assert np.median(orm[m][:, 1]) == pytest.approx(0.4, abs=0.02)
    assert np.median(orm[m][:, 2]) == pytest.approx(0.2, abs=0.02)
    # a textured render from a camera on +X shows red above the equator and blue below
    w2c = np.array([[0, 1, 0, 0], [0, 0, -1, 0], [-1, 0, 0, 3], [0, 0, 0, 1.0]])  # eye (3,0,0), looking -X
    K = np.array([[100, 0, 32], [0, 100, 32], [0, 0, 1.0]])
    img, mask = render_textured(v, f, uv, alb, w2c, K, 64, 64)
    assert mask[32, 32] and np.abs(img[22, 32] - RED).max() < 0.1 and np.abs(img[42, 32] - BLUE).max() < 0.1


def test_normal_map_is_flat_on_a_smooth_sphere(baked):
    out, _ = baked
    n = np.asarray(Image.open(out / "mesh_normal.png"), float) / 255 * 2 - 1
    assert np.median(n[..., 2]) > 0.97


def test_glb_parses_with_pbr_material(baked):
    out, _ = baked
    doc, binary = read_glb(out / "mesh.glb")
    mat = doc["materials"][0]
    assert "baseColorTexture" in mat["pbrMetallicRoughness"]
    assert "metallicRoughnessTexture" in mat["pbrMetallicRoughness"]
    assert "normalTexture" in mat
    prim = doc["meshes"][0]["primitives"][0]
    for attr in ("POSITION", "NORMAL", "TANGENT", "TEXCOORD_0"):
        assert attr in prim["attributes"]
    assert len(doc["images"]) == 3 and all(im["mimeType"] == "image/png" for im in doc["images"])
    pos = glb_accessor(doc, binary, prim["attributes"]["POSITION"])
    v, f, uv = _read_uv_ply(out / "mesh.ply")
    # glTF is Y up: (x, y, z)_blender -> (x, z, -y)
    assert np.allclose(pos, np.stack([v[:, 0], v[:, 2], -v[:, 1]], 1), atol=1e-5)
    t = glb_accessor(doc, binary, prim["attributes"]["TEXCOORD_0"])
    assert np.allclose(t[:, 1], 1 - uv[:, 1], atol=1e-6)
    idx = glb_accessor(doc, binary, prim["indices"])
    assert idx.size == f.size and idx.max() < len(pos)
    tan = glb_accessor(doc, binary, prim["attributes"]["TANGENT"])
    assert np.allclose(np.linalg.norm(tan[:, :3], axis=1), 1, atol=1e-4) and set(np.unique(tan[:, 3])) <= {-1.0, 1.0}


def test_mikk_tangents_on_a_plane():
    # a flat grid in XY with u = x, v = y: tangent +X, handedness +1; mirrored u gives -X and -1
    xs, ys = np.meshgrid(np.linspace(0, 1, 4), np.linspace(0, 1, 4))
    verts = np.stack([xs.ravel(), ys.ravel(), np.zeros(16)], 1)
    faces = np.array([[i * 4 + j, i * 4 + j + 1, i * 4 + j + 5] for i in range(3) for j in range(3)]
                     + [[i * 4 + j, i * 4 + j + 5, i * 4 + j + 4] for i in range(3) for j in range(3)])
    n = vertex_normals(verts, faces)
    assert np.allclose(n, [0, 0, 1])
    t = mikk_tangents(verts, faces, n, verts[:, :2])
    assert np.allclose(t, [1, 0, 0, 1])
    t = mikk_tangents(verts, faces, n, np.stack([1 - verts[:, 0], verts[:, 1]], 1))
    assert np.allclose(t, [-1, 0, 0, -1])


def test_unwrap_tangents_perpendicular(baked):
    out, _ = baked
    v, f, _ = _read_uv_ply(out / "mesh.ply")
    m = unwrap(Mesh(v, f, vertex_normals(v, f)), 256)
    assert np.abs(np.einsum("ij,ij->i", m.tangents[:, :3], m.normals)).max() < 1e-6
    assert uv_overlap_fraction(m, 256) < 1e-3


def _plane_at(z: float) -> UVMesh:
    """A 0.6 x 0.6 square at height z facing +Z, u = x, v = y (tangent frame = world axes)."""
    xs, ys = np.meshgrid(np.linspace(-0.3, 0.3, 5), np.linspace(-0.3, 0.3, 5))
    verts = np.stack([xs.ravel(), ys.ravel(), np.full(25, z)], 1)
    faces = np.array([[i * 5 + j, i * 5 + j + 1, i * 5 + j + 6] for i in range(4) for j in range(4)]
                     + [[i * 5 + j, i * 5 + j + 6, i * 5 + j + 5] for i in range(4) for j in range(4)])
    n = vertex_normals(verts, faces)
    uv = (verts[:, :2] + 0.3) / 0.6 * 0.8 + 0.1
    return UVMesh(verts, faces, n, uv, mikk_tangents(verts, faces, n, uv), np.arange(25))


def test_a_texel_a_little_off_the_rendered_surface_still_takes_the_views_normal():
    # One camera 2 units above z = 0 looking down; its splatted surface is the plane z = 0 with a tilted normal.
    # A mesh a few tolerances above that surface (a bulge of the fused mesh) must still get the views' normal
    # (the retries), not its own; one far above it is seen by no view and keeps the mesh's.
    S, tol = 64, 0.01
    tilted = np.array([0.6, 0.0, 0.8])
    feats = np.zeros((1, S, S, FEATURES), np.float32)
    feats[..., :3], feats[..., 3], feats[..., 5:8] = 0.5, 0.3, tilted
    views = ViewStack(viewmats=np.array([[[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 2], [0, 0, 0, 1]]]),
                      Ks=np.array([[[64.0, 0, 32], [0, 64, 32], [0, 0, 1]]]), sizes=np.array([[S, S]]),
                      depth=np.full((1, S, S), 2.0, np.float32), coverage=np.ones((1, S, S), np.float32),
                      feats=feats)
    for height, seen in ((0.5 * tol, True), (3.0 * tol, True), (20 * tol, False)):
        maps = bake_textures(_plane_at(height), views, 64, tol)
        inside = maps["mask"]
        assert maps["seen"][inside].all() == seen and maps["seen"][inside].any() == seen, height
        want = tilted if seen else np.array([0.0, 0.0, 1.0])
        assert np.allclose(maps["normal"][inside], want, atol=1e-6), height
