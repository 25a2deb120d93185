"""Environment light: Blender's equirectangular mapping, cubemaps, and a learnable, prefiltered HDR light.

**Equirectangular (Blender / Cycles world, Z up).** A unit direction (x, y, z) maps to
``u = 0.5 - atan2(y, x) / (2 pi)``, ``v = 1 - acos(z) / pi``; ``v = 1`` is the top row of the image
and +X is at the image centre (+Y a quarter to the left of it). Image arrays are (H, W, C), row 0 at
the top, so pixel column ``u * W - 0.5`` and row ``(1 - v) * H - 0.5``.

**Cubemap layout (ours).** A cube is a tensor (6, R, R, C); faces in the order +X, -X, +Y, -Y, +Z, -Z.
Each face has a forward axis F, a "right" axis (columns grow along it) and a "down" axis (rows grow
along it)::

    face   F     right   down
    0     +X     -Y      -Z
    1     -X     +Y      -Z
    2     +Y     +X      -Z
    3     -Y     -X      -Z
    4     +Z     +X      +Y
    5     -Z     +X      -Y

so the four side faces look upright (Z up) when viewed from the inside. Texel (row i, column j) has
face coordinates ``s = 2 (j + 0.5) / R - 1``, ``t = 2 (i + 0.5) / R - 1`` and direction
``normalize(F + s * right + t * down)``. Bilinear lookups are seamless: each face is padded with one
ring of texels taken from its neighbours before interpolation.

**Prefiltering (split-sum).** :meth:`EnvironmentLight.specular` builds a mip chain on every call, so
gradients reach the light: level 0 is the cube itself (mirror, roughness 0); level k >= 1 is the cube
box-downsampled to ``mip_sizes[k]`` and convolved with a sparse matrix holding the GGX lobe with the
split-sum assumption n = v = r: for output direction o and input texel direction l with solid angle
dw, ``w(o, l) = D(normalize(o + l)) * max(o . l, 0) * dw`` (the density of the reflected direction
under GGX sampling with n = v is D(h) / 4), rows truncated below ``filter_eps`` times their maximum
and normalised to sum 1. GGX alpha = roughness^2. **Roughness -> level**: level k holds roughness
``k / (L - 1)`` (L levels, default 6: 0, 0.2, ..., 1); a query roughness r is linearly interpolated
between levels ``floor(r (L - 1))`` and the next.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..train.sh import sh_basis

__all__ = [
    "dir_to_equirect_uv", "equirect_uv_to_dir", "equirect_dirs", "sample_equirect", "rotated_environment",
    "dir_to_cube", "cube_texel_dirs", "cube_texel_solid_angles", "sample_cube",
    "equirect_to_cubemap", "cubemap_to_equirect", "downsample_cube", "ggx_filter_matrix",
    "EnvironmentLight",
]

# (forward, right, down) per face, see the module docstring.
_FACES = torch.tensor([
    [[1, 0, 0], [0, -1, 0], [0, 0, -1]],
    [[-1, 0, 0], [0, 1, 0], [0, 0, -1]],
    [[0, 1, 0], [1, 0, 0], [0, 0, -1]],
    [[0, -1, 0], [-1, 0, 0], [0, 0, -1]],
    [[0, 0, 1], [1, 0, 0], [0, 1, 0]],
    [[0, 0, -1], [1, 0, 0], [0, -1, 0]],
], dtype=torch.float32)


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)


# --------------------------------------------------------------------------------------------- equirect


def dir_to_equirect_uv(dirs: torch.Tensor) -> torch.Tensor:
    """(..., 3) unit directions -> (..., 2) equirect (u, v) in [0, 1], Blender's convention."""
    x, y, z = dirs.unbind(-1)
    u = 0.5 - torch.atan2(y, x) / (2 * math.pi)
    v = 1.0 - torch.acos(z.clamp(-1.0, 1.0)) / math.pi
    return torch.stack([u, v], dim=-1)


def equirect_uv_to_dir(uv: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`dir_to_equirect_uv`: (..., 2) -> (..., 3) unit directions."""
    phi = (0.5 - uv[..., 0]) * (2 * math.pi)  # = atan2(y, x)
    theta = (1.0 - uv[..., 1]) * math.pi  # = acos(z)
    st = torch.sin(theta)
    return torch.stack([st * torch.cos(phi), st * torch.sin(phi), torch.cos(theta)], dim=-1)


def equirect_dirs(height: int, width: int | None = None) -> torch.Tensor:
    """Directions (H, W, 3) of the pixel centres of an equirect image (row 0 at the top)."""
    width = 2 * height if width is None else width
    u = (torch.arange(width, dtype=torch.float32) + 0.5) / width
    v = 1.0 - (torch.arange(height, dtype=torch.float32) + 0.5) / height
    uv = torch.stack(torch.meshgrid(u, v, indexing="xy"), dim=-1)
    return equirect_uv_to_dir(uv)


def sample_equirect(img: np.ndarray | torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup of an equirect image (H, W, C) in directions (..., 3) -> (..., C); wraps in u."""
    img = _as_tensor(img)
    h, w, c = img.shape
    uv = dir_to_equirect_uv(dirs.reshape(-1, 3).to(img.dtype))
    px = uv[:, 0] * w - 0.5
    py = (1.0 - uv[:, 1]) * h - 0.5
    x0 = torch.floor(px)
    y0 = torch.floor(py)
    fx = (px - x0)[:, None]
    fy = (py - y0)[:, None]
    x0 = x0.long()
    y0 = y0.long()
    xa, xb = x0 % w, (x0 + 1) % w
    ya, yb = y0.clamp(0, h - 1), (y0 + 1).clamp(0, h - 1)
    flat = img.reshape(-1, c)
    top = flat.index_select(0, ya * w + xa) * (1 - fx) + flat.index_select(0, ya * w + xb) * fx
    bot = flat.index_select(0, yb * w + xa) * (1 - fx) + flat.index_select(0, yb * w + xb) * fx
    return (top * (1 - fy) + bot * fy).reshape(*dirs.shape[:-1], c)


# --------------------------------------------------------------------------------------------- cubemap


def dir_to_cube(dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Directions (N, 3) -> (face (N,) long, s (N,), t (N,)) with s, t in [-1, 1] (column, row axes)."""
    faces = _FACES.to(dirs.device, dirs.dtype)
    a = dirs.abs()
    axis = a.argmax(dim=-1)
    neg = torch.gather(dirs, 1, axis[:, None])[:, 0] < 0
    face = axis * 2 + neg.long()
    major = torch.gather(a, 1, axis[:, None])[:, 0].clamp_min(1e-12)
    s = (dirs * faces[face, 1]).sum(-1) / major
    t = (dirs * faces[face, 2]).sum(-1) / major
    return face, s, t


def _face_dirs(size: int, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Directions (6, len(t), len(s), 3) for face coordinates on a grid."""
    f = _FACES
    ss = s[None, None, :, None]
    tt = t[None, :, None, None]
    d = f[:, None, None, 0] + ss * f[:, None, None, 1] + tt * f[:, None, None, 2]
    return F.normalize(d, dim=-1)


def cube_texel_dirs(size: int) -> torch.Tensor:
    """Unit directions (6, R, R, 3) of the texel centres of a cube of face size R."""
    c = (torch.arange(size, dtype=torch.float32) + 0.5) * (2.0 / size) - 1.0
    return _face_dirs(size, c, c)


def cube_texel_solid_angles(size: int) -> torch.Tensor:
    """Exact solid angle (6, R, R) of every texel; they sum to 4 pi.

    On the face plane at distance 1, dw = ds dt / (1 + s^2 + t^2)^(3/2), whose antiderivative is
    atan2(s t, sqrt(1 + s^2 + t^2))."""
    e = torch.linspace(-1.0, 1.0, size + 1, dtype=torch.float64)

    def area(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.atan2(s * t, torch.sqrt(1 + s * s + t * t))

    s0, s1 = e[None, :-1], e[None, 1:]
    t0, t1 = e[:-1, None], e[1:, None]
    om = area(s1, t1) - area(s0, t1) - area(s1, t0) + area(s0, t0)
    return om.float()[None].expand(6, size, size).contiguous()


_PAD_CACHE: dict[int, torch.Tensor] = {}


def _pad_index(size: int) -> torch.Tensor:
    """Index (6 * (R + 2)^2,) into a flattened cube: each face plus one ring of texels from its neighbours."""
    if size not in _PAD_CACHE:
        c = (torch.arange(-1, size + 1, dtype=torch.float32) + 0.5) * (2.0 / size) - 1.0
        d = _face_dirs(size, c, c).reshape(-1, 3)
        face, s, t = dir_to_cube(d)
        j = ((s + 1) * 0.5 * size).floor().long().clamp(0, size - 1)
        i = ((t + 1) * 0.5 * size).floor().long().clamp(0, size - 1)
        idx = (face * size + i) * size + j
        # Interior texels must map to themselves exactly (ties at edges could pick a neighbour face).
        idx = idx.reshape(6, size + 2, size + 2)
        own = torch.arange(6 * size * size).reshape(6, size, size)
        idx[:, 1:-1, 1:-1] = own
        _PAD_CACHE[size] = idx.reshape(-1)
    return _PAD_CACHE[size]


def sample_cube(cube: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Seamless bilinear lookup of a cube (6, R, R, C) in directions (..., 3) -> (..., C); differentiable
    with respect to the cube."""
    size, c = cube.shape[1], cube.shape[3]
    p = size + 2
    # index_select, not advanced indexing: the latter's backward on the CPU accumulates with atomics across
    # threads, so the light's gradient (and every run with two or more threads) was not reproducible.
    padded = cube.reshape(-1, c).index_select(0, _pad_index(size).to(cube.device))
    face, s, t = dir_to_cube(dirs.reshape(-1, 3).to(cube.dtype))
    # Padded pixel coordinates: texel j's centre is at j + 1.
    x = (s + 1) * 0.5 * size + 0.5
    y = (t + 1) * 0.5 * size + 0.5
    x0 = torch.floor(x).clamp(0, size)
    y0 = torch.floor(y).clamp(0, size)
    fx = (x - x0).clamp(0, 1)[:, None]
    fy = (y - y0).clamp(0, 1)[:, None]
    base = face * (p * p) + y0.long() * p + x0.long()
    v00, v01 = padded.index_select(0, base), padded.index_select(0, base + 1)
    v10, v11 = padded.index_select(0, base + p), padded.index_select(0, base + p + 1)
    out = (v00 * (1 - fx) + v01 * fx) * (1 - fy) + (v10 * (1 - fx) + v11 * fx) * fy
    return out.reshape(*dirs.shape[:-1], c)


def equirect_to_cubemap(img: np.ndarray | torch.Tensor, size: int, supersample: int | None = None) -> torch.Tensor:
    """Equirect (H, W, C) -> cube (6, R, R, C) by averaging ``supersample``^2 bilinear samples per texel.

    The default supersampling matches the texel footprint to the image's pixels (W / 4R per axis at a
    face centre) so that a detailed HDRI is not aliased into a small cube."""
    img = _as_tensor(img)
    w = img.shape[1]
    ss = supersample or int(min(8, max(1, math.ceil(w / (4 * size)))))
    c = (torch.arange(size * ss, dtype=torch.float32) + 0.5) * (2.0 / (size * ss)) - 1.0
    out = []
    for f in range(6):  # one face at a time keeps memory at R^2 ss^2 directions
        d = _face_dirs(size * ss, c, c)[f]
        vals = sample_equirect(img, d)  # (R ss, R ss, C)
        vals = vals.reshape(size, ss, size, ss, -1).mean(dim=(1, 3))
        out.append(vals)
    return torch.stack(out).contiguous()


def cubemap_to_equirect(cube: torch.Tensor, height: int) -> torch.Tensor:
    """Cube (6, R, R, C) -> equirect (H, 2H, C), bilinear."""
    return sample_cube(cube, equirect_dirs(height).to(cube.device))


def downsample_cube(cube: torch.Tensor, size: int) -> torch.Tensor:
    """Box-downsamples (6, R, R, C) to (6, size, size, C); R must be a multiple of size."""
    r = cube.shape[1]
    if r == size:
        return cube
    if r % size:
        raise ValueError(f"cube size {r} is not a multiple of {size}")
    k = r // size
    return cube.reshape(6, size, k, size, k, -1).mean(dim=(2, 4))


# ------------------------------------------------------------------------------------ GGX prefiltering

_FILTER_CACHE: dict[tuple[int, float, float], torch.Tensor] = {}


def ggx_filter_matrix(size: int, roughness: float, eps: float = 1e-3) -> torch.Tensor:
    """Sparse (6R^2, 6R^2) row-normalised GGX prefilter matrix for a cube of face size R (cached).

    Row o holds w(o, l) = D(h) max(o . l, 0) dw_l, h = normalize(o + l), alpha = roughness^2, truncated
    below ``eps`` times the row maximum. Roughness 0 gives the identity."""
    key = (size, float(roughness), float(eps))
    if key in _FILTER_CACHE:
        return _FILTER_CACHE[key]
    n = 6 * size * size
    if roughness <= 0:
        idx = torch.arange(n)
        mat = torch.sparse_coo_tensor(torch.stack([idx, idx]), torch.ones(n), (n, n), check_invariants=False).coalesce()
        _FILTER_CACHE[key] = mat
        return mat
    a2 = float(roughness) ** 4
    dirs = cube_texel_dirs(size).reshape(-1, 3)
    dw = cube_texel_solid_angles(size).reshape(-1)
    rows, cols, vals = [], [], []
    chunk = max(1, (1 << 22) // n)  # ~4M entries of dense work per chunk
    for r0 in range(0, n, chunk):
        o = dirs[r0:r0 + chunk]
        cos_ol = o @ dirs.T  # (c, n)
        nh2 = ((1 + cos_ol) * 0.5).clamp_min(0)  # (n . h)^2 with n = o, h = normalize(o + l)
        d = a2 / (math.pi * (nh2 * (a2 - 1) + 1) ** 2)
        w = d * cos_ol.clamp_min(0) * dw[None]
        keep = w >= eps * w.max(dim=1, keepdim=True).values
        w = torch.where(keep, w, torch.zeros_like(w))
        w = w / w.sum(dim=1, keepdim=True)
        ri, ci = keep.nonzero(as_tuple=True)
        rows.append(ri + r0)
        cols.append(ci)
        vals.append(w[ri, ci])
    idx = torch.stack([torch.cat(rows), torch.cat(cols)])
    mat = torch.sparse_coo_tensor(idx, torch.cat(vals), (n, n), check_invariants=False)
    mat = mat.coalesce()
    _FILTER_CACHE[key] = mat
    return mat


_SH_CACHE: dict[tuple[int, int], torch.Tensor] = {}


def _sh_projection(size: int, order: int) -> torch.Tensor:
    """(K, 6R^2) matrix: SH coefficients = M @ flattened radiance (solid-angle-weighted quadrature)."""
    key = (size, order)
    if key not in _SH_CACHE:
        dirs = cube_texel_dirs(size).reshape(-1, 3)
        dw = cube_texel_solid_angles(size).reshape(-1)
        _SH_CACHE[key] = (sh_basis(dirs, order) * dw[:, None]).T.contiguous()
    return _SH_CACHE[key]


# --------------------------------------------------------------------------------------------- the light


def rotated_environment(img: np.ndarray, rotation_deg: float, strength: float = 1.0) -> torch.Tensor:
    """Turn an equirect map about world +Z by ``rotation_deg`` (what sat at direction d moves to R d),
    the same sense as Blender's Mapping node Z rotation on the world's vector."""
    h = img.shape[0]
    dirs = equirect_dirs(h, img.shape[1])
    t = math.radians(rotation_deg)
    c, s = math.cos(t), math.sin(t)
    rot_inv = torch.tensor([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
    return sample_equirect(img, dirs @ rot_inv.T) * strength


class EnvironmentLight(torch.nn.Module):
    """A learnable HDR environment: a (6, R, R, 3) cube of log-radiance, radiance = exp(log_radiance).

    ``init`` is a constant radiance (float or RGB triple) or an equirect image (H, W, 3) in Blender's
    convention. ``mip_sizes`` are the face sizes of the prefiltered levels (level 0 must be R); by default
    six levels R, R/4, R/8, R/16, R/32, R/32 (never below 4) for roughness 0, 0.2, ..., 1."""

    def __init__(
        self,
        resolution: int = 128,
        init: float | Sequence[float] | np.ndarray | torch.Tensor = 0.5,
        mip_sizes: Sequence[int] | None = None,
        filter_eps: float = 1e-3,
    ):
        super().__init__()
        self.resolution = int(resolution)
        if mip_sizes is None:
            # Level k >= 1 at R / 2^(k+1): the lobes of roughness 0.2, 0.4, ... span a few texels there,
            # and the sparse matrices stay ~1M non-zeros (R / 2 for roughness 0.2 would be ~10M, 0.7 s
            # per forward + backward on a CPU).
            floor = min(4, self.resolution)
            mip_sizes = [self.resolution] + [max(self.resolution >> (k + 1), floor) for k in range(1, 6)]
        self.mip_sizes = [int(s) for s in mip_sizes]
        if self.mip_sizes[0] != self.resolution or len(self.mip_sizes) < 2:
            raise ValueError("mip_sizes must start with the cube resolution and have at least two levels")
        self.filter_eps = float(filter_eps)
        t = _as_tensor(init) if not isinstance(init, (int, float)) else torch.tensor(float(init))
        if t.ndim == 3:
            rad = equirect_to_cubemap(t[..., :3], self.resolution)
        else:
            rad = t.float().reshape(-1).expand(3).reshape(1, 1, 1, 3).expand(6, self.resolution, self.resolution, 3)
        # Small floor: exp cannot reach 0, and log(0) would be -inf.
        self.log_radiance = torch.nn.Parameter(torch.log(rad.clamp_min(1e-4)).contiguous().clone())

    @staticmethod
    def from_cube(cube: torch.Tensor, mip_sizes: Sequence[int] | None = None,
                  filter_eps: float = 1e-3) -> EnvironmentLight:
        """A fixed light whose radiance is the given linear cube (6, R, R, 3), gradient included: what is
        shaded with it trains whatever the cube was computed from."""
        return _CubeLight(cube, mip_sizes, filter_eps)

    @property
    def level_roughness(self) -> list[float]:
        """Roughness of each mip level: k / (L - 1)."""
        n = len(self.mip_sizes)
        return [k / (n - 1) for k in range(n)]

    def cube(self) -> torch.Tensor:
        """Linear radiance (6, R, R, 3)."""
        return torch.exp(self.log_radiance)

    def radiance(self, dirs: torch.Tensor) -> torch.Tensor:
        """Mirror lookup (..., 3) of the radiance arriving from directions ``dirs`` (..., 3)."""
        return sample_cube(self.cube(), dirs)

    def prefiltered_levels(self) -> list[torch.Tensor]:
        """The mip chain [(6, S_k, S_k, 3)], recomputed (differentiably) from the current light."""
        base = self.cube()
        levels = [base]
        for size, rough in zip(self.mip_sizes[1:], self.level_roughness[1:], strict=True):
            small = downsample_cube(base, size)
            mat = ggx_filter_matrix(size, rough, self.filter_eps).to(base.device)
            levels.append(torch.sparse.mm(mat, small.reshape(-1, 3)).reshape(6, size, size, 3))
        return levels

    def specular(
        self, dirs: torch.Tensor, roughness: torch.Tensor, levels: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Prefiltered radiance (N, 3) around reflection directions (N, 3) for GGX roughness (N,) or (N, 1).

        Pass ``levels`` from :meth:`prefiltered_levels` to reuse one mip chain for several calls."""
        levels = self.prefiltered_levels() if levels is None else levels
        n_lv = len(levels)
        pos = roughness.reshape(-1).clamp(0, 1) * (n_lv - 1)
        out = torch.zeros(dirs.shape[0], 3, dtype=levels[0].dtype, device=dirs.device)
        for k, lv in enumerate(levels):
            w = (1 - (pos - k).abs()).clamp_min(0)  # hat function: linear between neighbouring levels
            m = w > 0
            if bool(m.any()):
                out = out.index_add(0, m.nonzero()[:, 0], sample_cube(lv, dirs[m]) * w[m, None])
        return out

    def sh_coeffs(self, order: int = 2) -> torch.Tensor:
        """Projection (K, 3), K = (order + 1)^2, of the light onto the real SH of ``train.sh.sh_basis``."""
        m = _sh_projection(self.resolution, order).to(self.log_radiance.device)
        return m @ self.cube().reshape(-1, 3)

    @torch.no_grad()
    def to_equirect(self, height: int = 256) -> torch.Tensor:
        """Linear radiance as an equirect image (H, 2H, 3) in Blender's convention, for export."""
        return cubemap_to_equirect(self.cube().detach(), height)


class _CubeLight(EnvironmentLight):
    """An ``EnvironmentLight`` over a given radiance tensor instead of its own parameter."""

    def __init__(self, cube: torch.Tensor, mip_sizes: Sequence[int] | None, filter_eps: float):
        super().__init__(int(cube.shape[1]), 0.5, mip_sizes, filter_eps)
        self.log_radiance.requires_grad_(False)  # unused: ``cube`` is the radiance
        self._radiance = cube

    def cube(self) -> torch.Tensor:
        return self._radiance
