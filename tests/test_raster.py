"""The CPU backend (and CUDA when present) against the dense PyTorch reference: values and gradients."""

import time

import pytest
import torch

from prd_blender.trainer.raster import choose_backend, rasterization
from prd_blender.trainer.raster.synthetic import random_scene

PARAMS = ("means", "quats", "scales", "opacities", "features")


def _run(scene: dict, width: int, height: int, backend: str, weights: dict) -> dict:
    leaves = {k: v.clone().to(_device(backend)).requires_grad_(k in PARAMS) for k, v in scene.items()}
    out = rasterization(
        *(leaves[k] for k in PARAMS), leaves["viewmat"], leaves["K"], width, height, backend=backend
    )
    # A random linear functional of every output exercises every gradient path.
    depth_acc = out.depth * out.alpha
    loss = (
        (out.features * weights["f"].to(out.features)).sum()
        + (out.alpha * weights["a"].to(out.alpha)).sum()
        + (depth_acc * weights["d"].to(out.alpha)).sum()
    )
    loss.backward()
    res = {"features": out.features, "alpha": out.alpha, "depth_acc": depth_acc}
    res.update({f"grad_{k}": leaves[k].grad for k in PARAMS})
    return {k: v.detach().cpu() for k, v in res.items()}


def _device(backend: str) -> str:
    return "cuda" if backend == "cuda" else "cpu"


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _compare(seed: int, n: int, channels: int, width: int, height: int, backend: str, ref_backend: str = "reference"):
    scene = random_scene(n, channels, width, height, seed=seed)
    g = torch.Generator().manual_seed(seed + 1000)
    weights = {
        "f": torch.randn(height, width, channels, generator=g),
        "a": torch.randn(height, width, generator=g),
        "d": torch.randn(height, width, generator=g),
    }
    got = _run(scene, width, height, backend, weights)
    ref = _run(scene, width, height, ref_backend, weights)
    errors = {k: _rel(got[k], ref[k]) for k in ref}
    assert all(ref[k].norm() > 0 for k in ref), "degenerate scene: some output or gradient is zero"
    return errors


# Fresh inputs every run (the seed is printed on failure) plus fixed ones.
FRESH = int(time.time()) % 100_000


@pytest.mark.parametrize(
    "seed,n,channels,width,height",
    [(0, 300, 16, 48, 40), (1, 200, 3, 37, 29), (2, 500, 17, 64, 64), (3, 100, 1, 33, 47), (FRESH, 400, 13, 48, 48)],
)
def test_cpu_matches_reference(seed, n, channels, width, height):
    errors = _compare(seed, n, channels, width, height, "cpu")
    assert max(errors.values()) < 1e-4, f"seed {seed}: {errors}"


def test_cpu_matches_reference_opaque_and_culled():
    """Saturating pixels (early termination, alpha clamp) and Gaussians behind or beside the camera."""
    scene = random_scene(400, 4, 40, 40, seed=7)
    scene["opacities"] = torch.full_like(scene["opacities"], 0.995)
    scene["means"][:50, 2] = -4.0  # behind the camera (z < near after the view transform)
    scene["means"][50:80, 0] = 40.0  # far off to the side
    torch.manual_seed(0)
    weights = {"f": torch.randn(40, 40, 4), "a": torch.randn(40, 40), "d": torch.randn(40, 40)}
    got = _run(scene, 40, 40, "cpu", weights)
    ref = _run(scene, 40, 40, "reference", weights)
    assert float(ref["alpha"].max()) > 0.999  # some pixels reached the transmittance floor
    for k in ref:
        assert _rel(got[k], ref[k]) < 1e-4, k
    assert float(got["grad_means"][:50].abs().max()) == 0.0


def test_depth_of_a_wall():
    """A wall of small opaque Gaussians at z = 2 renders depth 2 and alpha ~1 in the middle."""
    n = 40
    xs, ys = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    means = torch.stack([xs.flatten(), ys.flatten(), torch.full((n * n,), 2.0)], -1)
    quats = torch.tensor([[1.0, 0, 0, 0]]).repeat(n * n, 1)
    scales = torch.full((n * n, 3), 0.04)
    opac = torch.full((n * n,), 0.9)
    K = torch.tensor([[32.0, 0, 16], [0, 32.0, 16], [0, 0, 1]])
    out = rasterization(means, quats, scales, opac, torch.ones(n * n, 2), torch.eye(4), K, 32, 32, backend="cpu")
    centre = (slice(8, 24), slice(8, 24))
    assert torch.allclose(out.depth[centre], torch.tensor(2.0), atol=1e-3)
    assert float(out.alpha[centre].min()) > 0.99
    assert out.features.shape == (32, 32, 2)


def _walls(front_opacity: float):
    """Two walls of Gaussians, a front one at z = 2 of the given opacity and an opaque one at z = 3."""
    n = 40
    xs, ys = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    grid = torch.stack([xs.flatten(), ys.flatten()], -1)
    means = torch.cat([torch.cat([grid, torch.full((n * n, 1), z)], 1) for z in (2.0, 3.0)])
    quats = torch.tensor([[1.0, 0, 0, 0]]).repeat(2 * n * n, 1)
    scales = torch.cat([torch.full((n * n, 3), 0.04), torch.full((n * n, 3), 0.06)])
    opac = torch.cat([torch.full((n * n,), front_opacity), torch.full((n * n,), 0.9)])
    return means, quats, scales, opac


def test_median_depth_is_the_first_surface_not_the_average():
    # A faint front layer leaves transmittance above 0.5, so the median depth is the back wall's; a dense
    # one takes it below, so it is the front's. The expected depth lies in between in both cases.
    K = torch.tensor([[32.0, 0, 16], [0, 32.0, 16], [0, 0, 1]])
    centre = (slice(10, 22), slice(10, 22))
    for front, want in ((0.06, 3.0), (0.25, 2.0)):  # the front layer alone: alpha 0.31 and 0.8
        m, q, s, o = _walls(front)
        out = rasterization(m, q, s, o, torch.ones(len(m), 1), torch.eye(4), K, 32, 32, backend="cpu",
                            median_depth=True)
        assert torch.allclose(out.median_depth[centre], torch.tensor(want), atol=0.02), front
        assert 2.05 < float(out.depth[centre].mean()) < 2.95, front
    far = rasterization(m, q, s, o, torch.ones(len(m), 1), torch.eye(4), K, 32, 32, backend="cpu")
    assert far.median_depth is None  # only computed when asked for


def test_empty_scene():
    s = random_scene(0, 3, 16, 16)
    out = rasterization(
        *(s[k] for k in PARAMS), s["viewmat"], s["K"], 16, 16, backend="cpu"
    )
    assert out.features.shape == (16, 16, 3)
    assert float(out.alpha.abs().max()) == 0.0


def test_auto_backend_explains_its_choice():
    backend, why = choose_backend("auto")
    if torch.cuda.is_available():
        assert backend in ("cuda", "cpu")
    else:
        assert backend == "cpu"
        assert "CUDA" in why
        with pytest.raises(RuntimeError, match="--device cpu"):
            choose_backend("cuda")
    with pytest.raises(ValueError, match="unknown"):
        choose_backend("tpu")


@pytest.mark.skipif(not choose_backend("auto")[0] == "cuda", reason="needs an NVIDIA GPU with gsplat")
@pytest.mark.parametrize("seed", [0, 1])
def test_cuda_matches_cpu(seed):
    errors = _compare(seed, 300, 16, 48, 40, "cuda", ref_backend="cpu")
    assert max(errors.values()) < 1e-3, errors
