"""Reader and metrics for the synthetic relighting benchmark (``scripts/make_relight_benchmark.py``).

Trainer side: numpy + OpenEXR + Pillow only (no bpy, no torch), so that evaluation runs anywhere.

Per object folder::

    transforms_train.json, transforms_test.json   NeRF Synthetic cameras (Blender camera.matrix_world)
    train/r_XXX.png, test/r_XXX.png               RGBA, sRGB display space, straight alpha
    test/r_XXX.exr                                passes, one EXR part (or layer) per pass, float32
    test_relight/<hdri>/r_XXX.png (+ .exr)        the test views under other HDRIs
    mesh.ply, meta.json

Passes in the EXR are pixel-filter averages over the whole pixel, background included (background = 0):
edge pixels hold coverage x value. The loader divides by the coverage (alpha) so that a constant
material value reads back exactly up to the silhouette.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

# Pass name (after the view-layer prefix) -> channel names, as Blender writes them.
_PASS_CHANNELS = {
    "Combined": "RGBA",
    "albedo": "RGB",
    "roughness": "X",
    "metallic": "X",
    "Normal": "XYZ",
}


@dataclass
class RelightView:
    """One test view: its camera, the image under the training HDRI, the material passes, relit images."""

    name: str  # e.g. "r_000"
    transform: np.ndarray  # (4, 4) camera-to-world, Blender/OpenGL camera axes
    image: np.ndarray  # (H, W, 4) float32 RGBA in [0, 1], display (sRGB) space, straight alpha
    linear: np.ndarray  # (H, W, 4) float32 linear RGBA (denoised render), straight alpha
    albedo: np.ndarray  # (H, W, 3) float32 linear base colour
    roughness: np.ndarray  # (H, W) float32
    metallic: np.ndarray  # (H, W) float32
    normal: np.ndarray  # (H, W, 3) float32 world-space unit normals (0 on the background)
    mask: np.ndarray  # (H, W) float32 coverage in [0, 1]
    relit: dict[str, np.ndarray] = field(default_factory=dict)  # hdri -> (H, W, 4) RGBA display [0, 1]
    relit_linear: dict[str, np.ndarray] = field(default_factory=dict)  # hdri -> (H, W, 4) linear RGBA


@dataclass
class RelightObject:
    """One benchmark object: camera files for training, test views with ground truth, metadata."""

    name: str
    root: Path
    train_transforms: Path
    test_transforms: Path
    hdri: str  # stem of the training HDRI
    relight_hdris: list[str]  # stems of the relighting HDRIs, keys of RelightView.relit
    camera_angle_x: float
    views: list[RelightView]
    meta: dict
    mesh: Path | None = None


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"relight benchmark: missing {what}: {path}")
    return path


def read_png(path: Path) -> np.ndarray:
    """RGBA PNG -> (H, W, 4) float32 in [0, 1] (display space, as stored)."""
    with Image.open(_require(path, "image")) as im:
        return np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0


def read_exr_passes(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """All channels of an EXR grouped by pass: ``{"roughness": {"X": ...}, "Combined": {"R": ...}}``.

    Blender 5.0 writes multilayer EXR as multi-part files (one part per pass, channels named
    ``ViewLayer.<pass>.<chan>``); older versions write one part with the same channel names. Grouping
    by channel name reads both. A plain RGBA EXR gives the pass ``""``.
    """
    import OpenEXR  # deferred: only the EXR paths need it

    passes: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    with OpenEXR.File(str(_require(path, "EXR")), separate_channels=True) as f:
        for part in f.parts:
            for full, chan in part.channels.items():
                layer, _, c = full.rpartition(".")
                passes[layer.split(".", 1)[-1] if "." in layer else layer][c] = np.asarray(
                    chan.pixels, dtype=np.float32
                )
    return dict(passes)


def _stack(passes: dict[str, dict[str, np.ndarray]], name: str, path: Path) -> np.ndarray:
    chans = passes.get(name)
    want = _PASS_CHANNELS.get(name, "RGBA")
    if chans is None or any(c not in chans for c in want):
        raise ValueError(f"relight benchmark: {path} lacks pass {name!r} (channels {want}); has {sorted(passes)}")
    return np.stack([chans[c] for c in want], axis=-1)


def _unpremultiply(x: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None] if x.ndim == 3 else alpha
    return np.where(a > 1e-4, x / np.maximum(a, 1e-4), 0.0).astype(np.float32)


def _straight_rgba(rgba: np.ndarray) -> np.ndarray:
    out = rgba.copy()
    out[..., :3] = _unpremultiply(rgba[..., :3], rgba[..., 3])
    return out


def load_test_passes(path: Path) -> dict[str, np.ndarray]:
    """The ground-truth passes of one test view: linear, albedo, roughness, metallic, normal, mask."""
    passes = read_exr_passes(path)
    combined = _stack(passes, "Combined", path)
    mask = combined[..., 3]
    normal = _stack(passes, "Normal", path)
    norm = np.linalg.norm(normal, axis=-1, keepdims=True)
    # The filtered normal is shorter at silhouettes and creases; renormalise instead of unpremultiplying.
    normal = np.where(norm > 1e-6, normal / np.maximum(norm, 1e-6), 0.0).astype(np.float32)
    return {
        "linear": _straight_rgba(combined),  # Blender stores premultiplied colour in EXR
        "albedo": _unpremultiply(_stack(passes, "albedo", path), mask),
        "roughness": _unpremultiply(_stack(passes, "roughness", path)[..., 0], mask),
        "metallic": _unpremultiply(_stack(passes, "metallic", path)[..., 0], mask),
        "normal": normal,
        "mask": mask.astype(np.float32),
    }


def read_json(path: Path, what: str) -> dict:
    """A benchmark JSON file; a missing or corrupt one raises an error that names it (``what``: for the user)."""
    try:
        return json.loads(_require(path, what).read_text())
    except ValueError as e:  # a corrupt file: say which one
        raise ValueError(f"relight benchmark: cannot read {what} {path}: {e}") from e


def load_relight_object(root: Path | str) -> RelightObject:
    """Load one object folder of the relighting benchmark (all test views, passes and relit images)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"relight benchmark: object folder not found: {root}")
    meta = read_json(root / "meta.json", "meta.json")
    train_tf = _require(root / "transforms_train.json", "train cameras")
    test_tf = root / "transforms_test.json"
    test = read_json(test_tf, "test cameras")
    relight = [h["name"] for h in meta.get("relight_hdris", [])]
    for h in relight:
        if not (root / "test_relight" / h).is_dir():
            raise FileNotFoundError(f"relight benchmark: no relit views for HDRI {h!r} in {root / 'test_relight'}")
    views = []
    for frame in test["frames"]:
        fp = frame["file_path"]
        name = Path(fp).name
        p = load_test_passes(root / f"{fp}.exr")
        view = RelightView(
            name=name,
            transform=np.asarray(frame["transform_matrix"], dtype=np.float64),
            image=read_png(root / f"{fp}.png"),
            **p,
        )
        for h in relight:
            base = root / "test_relight" / h / name
            view.relit[h] = read_png(base.with_suffix(".png"))
            if base.with_suffix(".exr").is_file():  # linear copy is optional
                view.relit_linear[h] = _straight_rgba(_stack(read_exr_passes(base.with_suffix(".exr")), "", base))
        views.append(view)
    mesh = root / "mesh.ply"
    return RelightObject(
        name=meta.get("object", root.name),
        root=root,
        train_transforms=train_tf,
        test_transforms=test_tf,
        hdri=meta["hdri"]["name"],
        relight_hdris=relight,
        camera_angle_x=float(test["camera_angle_x"]),
        views=views,
        meta=meta,
        mesh=mesh if mesh.is_file() else None,
    )


# --------------------------------------------------------------------------------------------------
# Metrics (DESIGN.md §5). ``mask``: (H, W) weights or booleans; pixels with mask > 0.5 count.


def _select(x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Masked pixels as (N, C) float64 (C = 1 for (H, W) maps)."""
    x = np.asarray(x, dtype=np.float64)
    if mask is not None:
        m = np.asarray(mask) > 0.5
        if m.shape != x.shape[: m.ndim]:
            raise ValueError(f"mask shape {m.shape} does not match image shape {x.shape}")
        x = x[m]
    else:
        x = x.reshape(-1, *x.shape[2:]) if x.ndim >= 2 else x
    return x.reshape(len(x), -1)


def psnr(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None, max_val: float = 1.0) -> float:
    """PSNR in dB over (masked) pixels and all channels; inf for identical inputs."""
    p, g = _select(pred, mask), _select(gt, mask)
    if p.size == 0:
        raise ValueError("psnr: empty mask")
    mse = float(np.mean((p - g) ** 2))
    return float("inf") if mse == 0.0 else float(10.0 * np.log10(max_val**2 / mse))


def scale_fit(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Per-channel least-squares scale s (minimising |s * pred - gt|^2 over masked pixels)."""
    p, g = _select(pred, mask), _select(gt, mask)
    den = np.sum(p * p, axis=0)
    return np.where(den > 0, np.sum(p * g, axis=0) / np.maximum(den, 1e-30), 1.0)


def scale_fit_psnr(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None, max_val: float = 1.0) -> float:
    """PSNR after a per-channel scale fit: albedo and relighting are only defined up to a global scale."""
    s = scale_fit(pred, gt, mask)
    pred = np.asarray(pred, dtype=np.float64)
    scaled = pred * s if pred.ndim == 3 else pred * s[0]
    return psnr(scaled, gt, mask, max_val)


def normal_angle_error_deg(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean angle in degrees between (renormalised) normals over masked pixels."""
    p, g = _select(pred, mask), _select(gt, mask)
    p = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
    g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    cos = np.clip(np.sum(p * g, axis=1), -1.0, 1.0)
    return float(np.degrees(np.mean(np.arccos(cos))))


def mae(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute error over masked pixels and all channels (roughness, metallic)."""
    p, g = _select(pred, mask), _select(gt, mask)
    return float(np.mean(np.abs(p - g)))
