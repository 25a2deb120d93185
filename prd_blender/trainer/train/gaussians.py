"""The Gaussian model: raw parameters, their activations, initialisation and the 3DGS PLY format."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .sh import rgb_to_sh_dc

SH_COEFFS = 16  # degree 3
# An oriented Gaussian (``train/normal_sign.py``) keeps its voted normal unless it faces away from the camera
# by more than this cosine: seen from behind that steeply it is a thin part's other side, not a silhouette.
# Re-signing trained models' normals (relighting run 19, three objects): 0.3 gave the best normals on two and
# the best relighting on two; never flipping (cosine 1) put mixed's normals 2° worse, 0.1 left the silhouette
# ring 12° off on diffuse and mixed.
BACKFACE_COS = 0.3
# The PLY header line that says the quaternions carry the normals' voted signs.
ORIENTED_COMMENT = "prd normals oriented"


def shortest_axes(quats: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """Each Gaussian's shortest axis in world space, with the quaternion's own sign (N, 3)."""
    from ..raster.projection import quat_to_rotmat

    rot = quat_to_rotmat(quats)
    idx = log_scales.argmin(dim=1)
    return torch.gather(rot, 2, idx[:, None, None].expand(-1, 3, 1)).squeeze(-1)


def inverse_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x / (1 - x))


class Gaussians:
    """Raw (unconstrained) parameters in a dict of leaf tensors, so optimisers and densification can
    treat them uniformly. scales are log-scales, opacities logits, quats unnormalised (w first)."""

    NAMES = ("means", "quats", "scales", "opacities", "sh0", "shN")
    # PRD's material and distillation progress, as logits (sigmoid gives values in [0, 1]).
    PBR_NAMES = ("albedo", "roughness", "metallic", "progress")

    def __init__(self, params: dict[str, torch.Tensor]):
        names = self.NAMES + tuple(k for k in self.PBR_NAMES if k in params)
        self.params = {k: params[k].detach().clone().requires_grad_(True) for k in names}
        # True once each shortest axis carries its outward sign (train/normal_sign.py); else the normal
        # is flipped to face every camera.
        self.oriented = False

    @property
    def has_pbr(self) -> bool:
        return all(k in self.params for k in self.PBR_NAMES)

    def add_pbr(self, albedo: float = 0.99, roughness: float = 0.99, metallic: float = 1.0, progress: float = 0.01):
        """Start stage 2: constant material and a small distillation progress everywhere (DESIGN.md §3)."""
        n = len(self)

        def logit(v: float, width: int) -> torch.Tensor:
            v = min(max(v, 1e-4), 1 - 1e-4)
            return torch.full((n, width), math.log(v / (1 - v))).requires_grad_(True)

        self.params.update(
            albedo=logit(albedo, 3), roughness=logit(roughness, 1), metallic=logit(metallic, 1),
            progress=logit(progress, 1),
        )

    def pbr(self, name: str) -> torch.Tensor:
        """Activated material channel: albedo (N, 3), roughness / metallic / progress (N, 1)."""
        return torch.sigmoid(self.params[name])

    def normals(self, cam_centre: torch.Tensor) -> torch.Tensor:
        """Each Gaussian's shortest axis (N, 3): flipped to face the camera, or, once oriented, with its
        voted sign unless it faces away by more than ``BACKFACE_COS``."""
        n = shortest_axes(self.quats, self.params["scales"])
        to_cam = cam_centre - self.means
        facing = (to_cam * n).sum(-1, keepdim=True)
        limit = -BACKFACE_COS * to_cam.detach().norm(dim=-1, keepdim=True) if self.oriented else 0.0
        return torch.where(facing < limit, -n, n)

    def __len__(self) -> int:
        return int(self.params["means"].shape[0])

    @property
    def means(self) -> torch.Tensor:
        return self.params["means"]

    @property
    def quats(self) -> torch.Tensor:
        return self.params["quats"]

    @property
    def scales(self) -> torch.Tensor:
        return torch.exp(self.params["scales"])

    @property
    def opacities(self) -> torch.Tensor:
        return torch.sigmoid(self.params["opacities"])

    @property
    def sh(self) -> torch.Tensor:
        return torch.cat([self.params["sh0"], self.params["shN"]], dim=1)

    @classmethod
    def from_points(cls, points: np.ndarray, colors: np.ndarray, init_opacity: float = 0.1) -> Gaussians:
        """Isotropic Gaussians at the given points, sized by the distance to their 3 nearest neighbours."""
        pts = torch.as_tensor(points, dtype=torch.float32)
        n = pts.shape[0]
        d2 = _knn_mean_sq_dist(pts, 3)
        log_scale = torch.log(torch.sqrt(d2.clamp_min(1e-10)))[:, None].repeat(1, 3)
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1
        sh0 = rgb_to_sh_dc(torch.as_tensor(colors, dtype=torch.float32))[:, None, :]
        return cls({
            "means": pts,
            "quats": quats,
            "scales": log_scale,
            "opacities": inverse_sigmoid(torch.full((n,), init_opacity)),
            "sh0": sh0,
            "shN": torch.zeros(n, SH_COEFFS - 1, 3),
        })

    @classmethod
    def random_in_sphere(cls, centre: np.ndarray, radius: float, n: int, seed: int = 0) -> Gaussians:
        """Random Gaussians filling a sphere: the start when the capture has no sparse points."""
        rng = np.random.default_rng(seed)
        d = rng.normal(size=(n, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        r = radius * rng.random(n) ** (1 / 3)
        pts = np.asarray(centre)[None] + d * r[:, None]
        colors = rng.random((n, 3))
        return cls.from_points(pts.astype(np.float32), colors.astype(np.float32))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.params.items()}

    def save_ply(self, path: Path) -> None:
        """Binary little-endian PLY with the fields standard 3DGS viewers read, then PBR fields if any."""
        extra = {}
        if self.has_pbr:
            with torch.no_grad():
                a = self.pbr("albedo").numpy()
                extra = {"albedo_0": a[:, 0], "albedo_1": a[:, 1], "albedo_2": a[:, 2]}
                for k in ("roughness", "metallic", "progress"):
                    extra[k] = self.pbr(k)[:, 0].numpy()
        write_ply(path, self.state_dict(), extra, comments=[ORIENTED_COMMENT] if self.oriented else [])

    @classmethod
    def load_ply(cls, path: Path) -> Gaussians:
        """Inverse of ``save_ply`` (PBR fields come back as logits)."""
        params, extra = read_ply(path)
        if all(k in extra for k in ("albedo_0", "roughness", "metallic", "progress")):
            def logit(v: np.ndarray) -> torch.Tensor:
                t = torch.from_numpy(np.clip(v, 1e-6, 1 - 1e-6)).float()
                return torch.log(t / (1 - t))

            params["albedo"] = torch.stack([logit(extra[f"albedo_{i}"]) for i in range(3)], 1)
            for k in ("roughness", "metallic", "progress"):
                params[k] = logit(extra[k])[:, None]
        model = cls(params)
        model.oriented = ORIENTED_COMMENT in ply_comments(path)
        return model


def _knn_mean_sq_dist(pts: torch.Tensor, k: int) -> torch.Tensor:
    out = torch.empty(pts.shape[0])
    for i in range(0, pts.shape[0], 1024):
        d = torch.cdist(pts[i : i + 1024], pts)
        out[i : i + 1024] = (d.topk(k + 1, largest=False).values[:, 1:] ** 2).mean(1)
    return out


def ply_fields(extra: tuple[str, ...] = ()) -> list[str]:
    fields = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    fields += [f"f_rest_{i}" for i in range(3 * (SH_COEFFS - 1))]
    fields += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    return fields + list(extra)


def write_ply(path: Path, params: dict[str, torch.Tensor], extra: dict[str, np.ndarray] | None = None,
              comments: list[str] | None = None) -> None:
    """Write raw parameters as a 3DGS PLY; ``extra`` adds named per-Gaussian float fields, ``comments``
    header comment lines (which 3DGS viewers skip)."""
    extra = extra or {}
    n = params["means"].shape[0]
    cols = [
        params["means"].numpy(),
        np.zeros((n, 3), np.float32),
        params["sh0"].reshape(n, 3).numpy(),
        # 3DGS stores the rest coefficients channel-major: all of R, then G, then B.
        params["shN"].transpose(1, 2).reshape(n, -1).numpy(),
        params["opacities"].reshape(n, 1).numpy(),
        params["scales"].numpy(),
        params["quats"].numpy(),
    ] + [np.asarray(v, np.float32).reshape(n, 1) for v in extra.values()]
    data = np.concatenate(cols, axis=1).astype("<f4")
    names = ply_fields(tuple(extra))
    header = "ply\nformat binary_little_endian 1.0\n" + "".join(f"comment {c}\n" for c in comments or [])
    header += f"element vertex {n}\n"
    header += "".join(f"property float {name}\n" for name in names) + "end_header\n"
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(header.encode("ascii"))
        fh.write(data.tobytes())
    tmp.replace(path)


def ply_comments(path: Path) -> list[str]:
    """The text of a PLY header's ``comment`` lines."""
    out = []
    with open(path, "rb") as fh:
        for line in fh:
            text = line.decode("ascii", "replace").strip()
            if text == "end_header":
                break
            if text.startswith("comment "):
                out.append(text[len("comment "):])
    return out


def read_ply(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """Read a PLY written by ``write_ply`` (or by 3DGS): raw parameters plus any extra fields."""
    with open(path, "rb") as fh:
        if fh.readline().strip() != b"ply":
            raise ValueError(f"{path} is not a PLY file")
        names: list[str] = []
        n = 0
        while True:
            line = fh.readline()
            if not line:
                raise ValueError(f"{path}: PLY header has no end_header")
            tok = line.decode("ascii", "replace").split()
            if tok[:1] == ["format"] and tok[1] != "binary_little_endian":
                raise ValueError(f"{path}: only binary little-endian PLY is supported, found {tok[1]}")
            if tok[:2] == ["element", "vertex"]:
                n = int(tok[2])
            elif tok[:1] == ["property"]:
                if tok[1] != "float":
                    raise ValueError(f"{path}: property {tok[-1]} is {tok[1]}, expected float")
                names.append(tok[2])
            elif tok[:1] == ["end_header"]:
                break
        data = np.frombuffer(fh.read(n * 4 * len(names)), dtype="<f4")
    if data.size != n * len(names):
        raise ValueError(f"{path}: PLY is truncated ({data.size} of {n * len(names)} values)")
    data = data.reshape(n, len(names))
    col = {name: data[:, i] for i, name in enumerate(names)}

    def stack(keys: list[str]) -> torch.Tensor:
        return torch.from_numpy(np.stack([col[k] for k in keys], axis=1).copy())

    n_rest = len([k for k in names if k.startswith("f_rest_")]) // 3
    rest = stack([f"f_rest_{i}" for i in range(3 * n_rest)]).reshape(n, 3, n_rest).transpose(1, 2)
    if n_rest < SH_COEFFS - 1:
        rest = torch.cat([rest, torch.zeros(n, SH_COEFFS - 1 - n_rest, 3)], dim=1)
    params = {
        "means": stack(["x", "y", "z"]),
        "quats": stack([f"rot_{i}" for i in range(4)]),
        "scales": stack([f"scale_{i}" for i in range(3)]),
        "opacities": torch.from_numpy(col["opacity"].copy()),
        "sh0": stack(["f_dc_0", "f_dc_1", "f_dc_2"])[:, None, :],
        "shN": rest.contiguous(),
    }
    known = set(ply_fields())
    extra = {k: col[k].copy() for k in names if k not in known}
    return params, extra

