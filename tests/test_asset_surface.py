"""Surface extraction: a sphere of Gaussians gives a closed sphere; bad Gaussian files raise clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prd_blender.trainer.asset import surface as S
from prd_blender.trainer.asset.synthetic import sphere_gaussians

SMALL = {"grid": 64, "render": 96, "faces": 3000, "extra_views": 20}


@pytest.fixture(scope="module")
def sphere_mesh():
    # the depth fusion alone: the disc centres lie on the sphere, so its radius is the known answer
    mesh, views, info = S.extract_surface(sphere_gaussians(radius=0.5), [], "preview", "cpu", silhouette_fit=False,
                                          silhouette_fill=False, **SMALL)
    return mesh, info


def test_silhouette_fit_moves_the_surface_onto_the_coverage_silhouette(sphere_mesh):
    # The discs' footprints reach past their centres, so the rendered silhouette (coverage 0.5) lies outside
    # the fused sphere; the fit measures that gap and fuses again moved out by it.
    plain, _ = sphere_mesh
    mesh, _, info = S.extract_surface(sphere_gaussians(radius=0.5), [], "preview", "cpu", **SMALL)
    off = info["depth_offset"]
    assert off["pixels_before"] > 0.5 and abs(off["pixels_after"]) < 0.25
    grown = np.linalg.norm(mesh.vertices, axis=1).mean() - np.linalg.norm(plain.vertices, axis=1).mean()
    assert grown == pytest.approx(off["world"], abs=0.3 * info["voxel"])
    assert info["watertight"]


def test_silhouette_fill_restores_a_cap_whose_depth_came_out_too_deep():
    # Shiny surfaces get splatted depth that is locally too deep (reflections painted from behind). Fake that
    # on the sphere's top cap: the fused cap sinks and misses covered pixels in the side views; the fill grows
    # it back out to the visual hull there and leaves the rest of the sphere where the depth put it.
    model = sphere_gaussians(radius=0.5)
    lo, hi = S.object_bounds(model, np.ones(len(model.means), bool))
    views = S.render_views(model, S.sphere_cameras(np.zeros(3), 0.55, 2.0, 24, 96), "cpu")
    for v in range(len(views.depth)):
        M, K = views.viewmats[v], views.Ks[v]
        h, w = views.depth[v].shape
        uu, vv = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
        rays = np.stack([(uu - K[0, 2]) / K[0, 0], (vv - K[1, 2]) / K[1, 1], np.ones_like(uu)], -1)
        world = (rays * views.depth[v][..., None] - M[:3, 3]) @ M[:3, :3]  # camera -> world (R orthonormal)
        cap = (world[..., 2] > 0.3) & (views.coverage[v] > 0.5)
        views.depth[v][cap] += 0.12
    vol, origin, voxel = S.fuse_tsdf(views, lo, hi, 64)

    def top(volume):
        verts, faces = S.main_components(*S.marching_cubes(S.clean_volume(volume), origin - voxel, voxel))
        return verts, faces, verts[:, 2].max(), np.linalg.norm(verts[verts[:, 2] < 0], axis=1).mean()

    _, _, sunk_top, sunk_lower = top(vol)
    filled, report = S.fill_silhouettes(vol, origin, voxel, views)
    verts, faces, filled_top, filled_lower = top(filled)
    assert sunk_top < 0.45 and report["missed_pixels"] > 0.01 and report["filled_voxels"] > 0
    assert filled_top == pytest.approx(0.5, abs=1.5 * voxel)  # back on the sphere
    assert filled_lower == pytest.approx(sunk_lower, abs=0.25 * voxel)  # the lower half was not touched
    again, second = S.fill_silhouettes(filled, origin, voxel, views)
    assert second["missed_pixels"] < 0.2 * report["missed_pixels"]


def test_sphere_radius_and_watertight(sphere_mesh):
    mesh, info = sphere_mesh
    r = np.linalg.norm(mesh.vertices, axis=1)
    # splatted depth of the disc Gaussians sits slightly in front of the sphere at oblique views: ~1 voxel
    assert abs(r.mean() - 0.5) < 0.025
    assert r.std() < 0.01
    assert info["watertight"] and info["boundary_edges"] == 0 and info["nonmanifold_edges"] == 0
    assert 2000 <= info["faces"] <= 3100
    vol = S.signed_volume(mesh.vertices, mesh.faces)
    assert vol == pytest.approx(4 / 3 * math.pi * r.mean() ** 3, rel=0.03)


def test_normals_point_outward(sphere_mesh):
    mesh, _ = sphere_mesh
    radial = mesh.vertices / np.linalg.norm(mesh.vertices, axis=1, keepdims=True)
    assert (np.einsum("ij,ij->i", mesh.normals, radial) > 0.9).mean() > 0.99


def test_repair_and_fill_holes():
    # an octahedron with one face removed: fill_holes closes it; repair keeps it watertight
    v = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float)
    f = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    assert S.edge_report(f)["watertight"]
    v2, f2 = S.fill_holes(v, f[1:])
    assert S.edge_report(f2)["watertight"] and len(f2) == 10
    # a duplicated face makes edges non-manifold; repair removes and re-closes
    v3, f3 = S.repair(v, np.concatenate([f, f[:1]]))
    assert S.edge_report(f3)["watertight"]


def test_repair_separates_two_solids_touching_along_an_edge():
    # Two closed octahedra sharing one edge (4 faces on it), as two sheets of a crease can after
    # decimation (glossy benchmark, mesh run 6): removing and refilling faces there pinches again, so repair
    # must split the shared vertices instead; both solids stay whole and closed.
    v = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float)
    f = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    # |x| + |y| + |z| <= 1 and the same moved by t: they meet only along the edge from (1, 0, 0) to (0, 0, 1),
    # which is the second one's edge from its vertex 5 to its vertex 1
    t = np.array([1.0, 0, 1])
    verts = np.concatenate([v, v + t])
    remap = np.array([6, 4, 8, 9, 10, 0])  # the second one's vertices 1 and 5 are the first one's 4 and 0
    f2 = remap[f]
    faces = np.concatenate([f, f2])
    rep = S.edge_report(faces)
    assert rep["nonmanifold_edges"] == 1 and not rep["watertight"]
    v3, f3 = S.unpinch(verts, faces)
    assert S.edge_report(f3)["watertight"] and len(f3) == 16 and len(v3) == 12
    np.testing.assert_allclose(np.sort(v3, 0), np.sort(verts, 0), atol=0.1)  # copies step 0.07 into each solid
    assert 0.9 * 2 * S.signed_volume(v, f) < S.signed_volume(v3, f3) < 2 * S.signed_volume(v, f)
    # apart in space too: welding by position (as the mesh benchmark does across UV seams) keeps it closed
    assert S.edge_report(S.weld(v3, f3)[1])["watertight"]
    v4, f4 = S.repair(verts, faces)
    assert S.edge_report(f4)["watertight"]
    # the same two solids with no vertex shared, only coincident (decimation can leave them so: glossy at
    # 3 x 1000): closed by index, pinched once welded by position; repair must separate them in space
    apart = np.concatenate([f, f + 6])
    assert S.edge_report(apart)["watertight"]
    assert S.edge_report(S.weld(verts, apart)[1])["nonmanifold_edges"] == 1
    v7, f7 = S.repair(verts, apart)
    assert S.edge_report(f7)["watertight"] and S.edge_report(S.weld(v7, f7)[1])["watertight"]
    assert abs(S.signed_volume(v7, f7) / (2 * S.signed_volume(v, f)) - 1) < 0.2  # refilled, not lost
    # two solids meeting at a single point, with distinct coincident vertices there: the weld joins them into a
    # bowtie vertex, which repair must split apart again (every vertex ends with one fan, in its own place)
    point = np.concatenate([v, v + np.array([2.0, 0, 0])])
    v8, f8 = S.repair(point, np.concatenate([f, f + 6]))
    assert len(f8) == 16 and len(S.weld(v8, f8)[0]) == 12 and S.edge_report(S.weld(v8, f8)[1])["watertight"]
    # a mesh that is already manifold comes back as it was
    v5, f5 = S.unpinch(v, f)
    np.testing.assert_array_equal(v5[f5], v[f])
    # inward winding (repair runs before the mesh is turned outward): the copies still move into their solid
    v6, f6 = S.unpinch(verts, faces[:, ::-1])
    assert 0.9 * 2 * S.signed_volume(v, f) < -S.signed_volume(v6, f6) < 2 * S.signed_volume(v, f)


def _with(model, **changes):
    params = {k: v.detach().clone() for k, v in model.params.items()}
    params.update(changes)
    return type(model)(params)


def test_bad_inputs_raise_clear_errors():
    g = sphere_gaussians(n=300)
    n = len(g)
    with pytest.raises(ValueError, match="transparent"):
        S.extract_surface(_with(g, opacities=torch.full((n,), -12.0)), [], "preview", "cpu", **SMALL)
    means = g.params["means"].detach().clone()
    means[5, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        S.validate_gaussians(_with(g, means=means))
    with pytest.raises(ValueError, match="absurd scales"):
        S.validate_gaussians(_with(g, scales=torch.full((n, 3), 8.0)))
    with pytest.raises(ValueError, match="unknown quality"):
        S.settings("ultra")


def test_separate_parts_are_kept_and_floaters_dropped():
    # Inside is negative: a big ball, a small separate part (~3 % of its volume), a one-voxel floater.
    n = 40
    g = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1).astype(float)
    big = np.linalg.norm(g - [20, 20, 14], axis=-1) < 10
    small = np.linalg.norm(g - [20, 20, 33], axis=-1) < 3.2
    vol = np.where(big | small, -1.0, 1.0)
    vol[3, 3, 3] = -1.0
    clean = S.clean_volume(vol)
    from scipy import ndimage

    assert ndimage.label(clean < 0)[1] == 2  # the two parts, not the floater
    verts, faces = S.marching_cubes(clean, np.zeros(3), 1.0)
    _, f = S.main_components(verts, faces)
    assert len(f) == len(faces)  # both surfaces survive the mesh-level filter too


def test_smoothing_takes_out_bumps_and_keeps_the_shape():
    # A marching-cubes sphere of radius 0.5 with radial noise of 2 % (0.01): Taubin smoothing brings its vertex
    # normals much closer to the sphere's and keeps the radius (no shrinking); bounded, no vertex moves further
    # than the bound; a vertex in no face stays put.
    g = np.linspace(-0.6, 0.6, 41)
    vol = np.linalg.norm(np.stack(np.meshgrid(g, g, g, indexing="ij"), -1), axis=-1) - 0.5
    verts, faces = S.marching_cubes(vol, np.full(3, -0.6), g[1] - g[0])
    verts *= 0.5 / np.linalg.norm(verts, axis=1, keepdims=True)
    rng = np.random.default_rng(0)
    noisy = verts * (1 + 0.02 * rng.standard_normal(len(verts)))[:, None]

    def normal_error_deg(v):
        n = S.vertex_normals(v, faces)
        return np.degrees(np.arccos(np.clip((n * verts / 0.5).sum(1), -1, 1))).mean()

    for bound in (None, 0.02):
        smooth = S.smooth(np.vstack([noisy, [[2.0, 0.0, 0.0]]]), faces, 80, max_shift=bound)
        assert np.array_equal(smooth[-1], [2.0, 0.0, 0.0])
        smooth = smooth[:-1]
        assert normal_error_deg(noisy) > 15.0 and normal_error_deg(smooth) < 0.35 * normal_error_deg(noisy)
        assert np.linalg.norm(smooth, axis=1).mean() == pytest.approx(0.5, rel=0.01)
        if bound is not None:
            assert np.linalg.norm(smooth - noisy, axis=1).max() <= bound + 1e-9
    assert np.array_equal(S.smooth(noisy, faces, 0), noisy)


def test_decimation_gives_faces_back_until_the_surface_is_kept_within_a_cap():
    # A sphere decimated to 25 faces would lose a tenth of its area (a coarse polyhedron inside it): the target is
    # doubled until 98 % of the area stays and the mesh is closed (100 faces). A reachable target is kept as
    # asked. The doubling stops at MAX_FACES_FACTOR times the target: asked for 10 faces, the sphere gets 40 and
    # what they keep (a noisy surface must not turn a 20k-face preview into 320k faces).
    g = np.linspace(-0.6, 0.6, 41)
    vol = np.linalg.norm(np.stack(np.meshgrid(g, g, g, indexing="ij"), -1), axis=-1) - 0.5
    verts, faces = S.main_components(*S.marching_cubes(vol, np.full(3, -0.6), g[1] - g[0]))
    v, f, info = S.decimate(verts, faces, 25)
    assert info["target_faces"] == 100 and info["area_kept"] >= S.MIN_AREA_KEPT and "capped" not in info
    assert S.edge_report(f)["watertight"] and len(f) <= info["target_faces"]
    v, f, info = S.decimate(verts, faces, 2000)
    assert info["target_faces"] == 2000 and info["area_kept"] >= S.MIN_AREA_KEPT and S.edge_report(f)["watertight"]
    assert S.MAX_FACES_FACTOR == 4
    v, f, info = S.decimate(verts, faces, 10)
    assert info["capped"] and info["target_faces"] == 40 and len(f) <= 40
    assert 0.8 < info["area_kept"] < S.MIN_AREA_KEPT


def test_faint_haze_in_front_of_a_surface_does_not_set_its_depth():
    # The tails of faint Gaussians hanging into a gap can sum to transmittance 0.5 before a ray reaches the
    # floor it sees (the mixed benchmark's ball in its bowl), which fused into a false floor. Three faint
    # layers above an opaque one: all the Gaussians put the median depth in the haze; the fused depth is the
    # opaque layer's, unless that lies less than ``haze_gap`` deeper.
    from prd_blender.trainer.raster import rasterization
    from prd_blender.trainer.train.gaussians import SH_COEFFS, Gaussians

    n = 40
    xs, ys = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    grid = torch.stack([xs.flatten(), ys.flatten()], -1)
    heights = (0.0, 0.4, 0.5, 0.6)  # the opaque floor, then the haze
    means = torch.cat([torch.cat([grid, torch.full((n * n, 1), z)], 1) for z in heights])
    opac = torch.cat([torch.full((n * n,), o) for o in (0.9, 0.06, 0.06, 0.06)])
    assert (opac[n * n:] < S.DEPTH_MIN_OPACITY).all()
    m = len(means)
    model = Gaussians({"means": means, "quats": torch.tensor([[1.0, 0, 0, 0]]).repeat(m, 1),
                       "scales": torch.full((m, 3), math.log(0.05)), "opacities": torch.logit(opac),
                       "sh0": torch.zeros(m, 1, 3), "shN": torch.zeros(m, SH_COEFFS - 1, 3)})
    cam = S.look_at_camera(np.array([0.0, 0.0, 2.0]), np.zeros(3), 32.0, 32)
    centre = (slice(12, 20), slice(12, 20))
    full = rasterization(model.means, model.quats, model.scales, model.opacities, torch.ones(m, 1), cam.viewmat,
                         cam.K, 32, 32, backend="cpu", median_depth=True)
    assert float(full.median_depth[centre].max()) < 1.65  # every Gaussian: the haze takes it below 0.5
    views = S.render_views(model, [cam], "cpu", haze_gap=0.1)
    assert views.depth[0][centre] == pytest.approx(2.0, abs=0.03)
    assert views.coverage[0][centre].min() > 0.95
    near = S.render_views(model, [cam], "cpu", haze_gap=1.0)  # the haze is 0.4-0.6 in front: within the gap
    assert np.allclose(near.depth[0][centre], full.median_depth[centre].numpy(), atol=1e-5)
