"""Similarity transforms: normalising a fresh reconstruction, and aligning one to ground truth.

A structure-from-motion result lives in an arbitrary frame (first camera's axes, arbitrary scale).
:func:`normalising_similarity` picks a frame Blender users expect:
- up: the mean of the cameras' up vectors becomes +Z. People hold cameras upright, so on average
  their up vectors point against gravity even when each one is tilted towards the object. When the
  cameras disagree (rolled shots, a mix of portrait and landscape), the mean is short and unreliable,
  so we fall back to the normal of the plane through the camera centres (orbit captures keep roughly
  one height), oriented to agree with the mean up.
- centre: the point nearest to all optical axes (least squares), i.e. what the cameras look at. For
  captures whose axes are nearly parallel (forward-facing) that point is ill-defined, and the median
  of the sparse points takes its place.
- scale: the median camera distance from that centre becomes ``target_distance`` (default 4, like the
  NeRF Synthetic cameras), so training defaults (learning rates are scene-scaled anyway) and Blender's
  viewport clipping behave the same for every capture.
All matrices here act on column vectors of world points: ``x_new = s R x_old + t``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# below this mean-resultant length the camera up vectors disagree too much to define gravity
MIN_UP_AGREEMENT = 0.5
# smallest eigenvalue (per camera) of sum(I - d d^T): below it the optical axes do not converge
MIN_AXIS_SPREAD = 0.02


@dataclass
class Normalisation:
    """The similarity that took the reconstruction into the normalised frame, and how it was chosen."""

    matrix: np.ndarray  # 4x4, x_new = matrix @ x_old (homogeneous)
    scale: float
    up_method: str  # "camera_up", "camera_plane" or "none"
    up_agreement: float  # length of the mean camera up vector (1 = all cameras agree)
    centre_method: str  # "optical_axes" or "points_median" or "camera_centroid"
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "normalized_from_colmap": self.matrix.tolist(),
            "colmap_from_normalized": np.linalg.inv(self.matrix).tolist(),
            "scale": self.scale,
            "up_method": self.up_method,
            "up_agreement": self.up_agreement,
            "centre_method": self.centre_method,
            "notes": self.notes,
        }


def similarity_matrix(scale: float, rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """4x4 matrix of x -> scale * rotation @ x + translation."""
    m = np.eye(4)
    m[:3, :3] = scale * np.asarray(rotation, dtype=np.float64)
    m[:3, 3] = translation
    return m


def transform_world_to_cam(world_to_cam: np.ndarray, sim: np.ndarray) -> np.ndarray:
    """A camera's world-to-camera matrix after the world moved by the similarity ``sim`` (rigid result).

    The camera centre moves like any point and the camera turns with the world rotation; the scale only
    changes units, so the result is rigid again (R' = R Rs^T, t' = s t - R' ts).
    """
    s = np.cbrt(np.linalg.det(sim[:3, :3]))
    rs = sim[:3, :3] / s
    rot = world_to_cam[:3, :3] @ rs.T
    centre = -world_to_cam[:3, :3].T @ world_to_cam[:3, 3]
    new_centre = sim[:3, :3] @ centre + sim[:3, 3]
    out = np.eye(4)
    out[:3, :3] = rot
    out[:3, 3] = -rot @ new_centre
    return out


def rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation taking unit vector ``a`` onto unit vector ``b``."""
    a = a / np.linalg.norm(a)
    b = b / np.linalg.norm(b)
    v = np.cross(a, b)
    c = float(np.dot(a, b))
    if c < -1.0 + 1e-12:  # opposite: turn half way round any axis perpendicular to a
        axis = np.cross(a, [1.0, 0.0, 0.0])
        if np.linalg.norm(axis) < 1e-6:
            axis = np.cross(a, [0.0, 1.0, 0.0])
        axis /= np.linalg.norm(axis)
        return 2.0 * np.outer(axis, axis) - np.eye(3)
    vx = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return np.eye(3) + vx + vx @ vx / (1.0 + c)


def nearest_point_to_axes(centres: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares point closest to the lines centre_i + s * direction_i; also the spread measure.

    Minimises sum |(I - d d^T)(x - c)|^2. The smallest eigenvalue of the normal matrix, per line,
    says how well the lines pin the point down (0 when they are all parallel).
    """
    d = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    proj = np.eye(3)[None] - d[:, :, None] * d[:, None, :]
    a = proj.sum(axis=0)
    b = np.einsum("nij,nj->i", proj, centres)
    spread = float(np.linalg.eigvalsh(a)[0]) / len(centres)
    if spread < 1e-9:
        return centres.mean(axis=0), spread
    return np.linalg.solve(a, b), spread


def normalising_similarity(
    world_to_cams: list[np.ndarray], points: np.ndarray | None = None, target_distance: float = 4.0
) -> Normalisation:
    """Gravity-align, centre and scale a reconstruction (see the module docstring)."""
    if len(world_to_cams) < 2:
        raise ValueError("normalising needs at least two cameras")
    rots = np.stack([w[:3, :3] for w in world_to_cams])
    centres = np.stack([-w[:3, :3].T @ w[:3, 3] for w in world_to_cams])
    ups = -rots[:, 1, :]  # camera -y (OpenCV y points down) in world coordinates = row 1 of R, negated
    forwards = rots[:, 2, :]
    notes: list[str] = []

    mean_up = ups.mean(axis=0)
    agreement = float(np.linalg.norm(mean_up))
    if agreement >= MIN_UP_AGREEMENT:
        up, up_method = mean_up / agreement, "camera_up"
    else:
        centred = centres - centres.mean(axis=0)
        _, svals, vt = np.linalg.svd(centred, full_matrices=False)
        normal = vt[-1]
        if len(centres) >= 3 and svals[-1] < 0.5 * svals[-2]:
            up = normal if np.dot(normal, mean_up) >= 0 else -normal
            up_method = "camera_plane"
            notes.append("camera up vectors disagree; up is the normal of the camera-centre plane")
        else:
            up, up_method = np.array([0.0, 0.0, 1.0]), "none"
            notes.append("cannot tell which way is up (cameras disagree and do not lie on a plane)")
    rot = rotation_between(up, np.array([0.0, 0.0, 1.0])) if up_method != "none" else np.eye(3)

    centre, spread = nearest_point_to_axes(centres, forwards)
    centre_method = "optical_axes"
    if spread < MIN_AXIS_SPREAD or not np.all(np.isfinite(centre)):
        if points is not None and len(points):
            centre, centre_method = np.median(np.asarray(points, dtype=np.float64), axis=0), "points_median"
        else:
            centre, centre_method = centres.mean(axis=0), "camera_centroid"
        notes.append("optical axes nearly parallel (forward-facing capture): centred on the scene instead")

    dist = float(np.median(np.linalg.norm(centres - centre, axis=1)))
    if not np.isfinite(dist) or dist <= 0:
        raise ValueError("cameras coincide: cannot choose a scale")
    scale = target_distance / dist
    matrix = similarity_matrix(scale, rot, -scale * rot @ centre)
    return Normalisation(matrix, scale, up_method, agreement, centre_method, notes)


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (4x4) mapping points ``src`` (N, 3) onto ``dst`` (Umeyama 1991)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or len(src) < 3:
        raise ValueError("umeyama needs two (N >= 3, 3) arrays of matching points")
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    u, sv, vt = np.linalg.svd(cov)
    d = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[2] = -1.0
    rot = u @ np.diag(d) @ vt
    var_s = (xs**2).sum() / len(src)
    scale = float((sv * d).sum() / var_s)
    return similarity_matrix(scale, rot, mu_d - scale * rot @ mu_s)


def rotation_angle_deg(r_a: np.ndarray, r_b: np.ndarray) -> float:
    """Angle of the rotation between two rotation matrices, in degrees."""
    cos = (np.trace(r_a @ r_b.T) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def pose_errors(est_w2c: list[np.ndarray], true_w2c: list[np.ndarray]) -> dict:
    """Align estimated cameras to the truth by their centres (Umeyama), then compare every camera.

    Returns the similarity, per-camera rotation errors (degrees) and centre errors (truth units), and
    the scene radius (largest distance of a true camera centre from the centroid of all of them).
    """
    est_c = np.stack([-w[:3, :3].T @ w[:3, 3] for w in est_w2c])
    true_c = np.stack([-w[:3, :3].T @ w[:3, 3] for w in true_w2c])
    sim = umeyama(est_c, true_c)
    rot_err, centre_err = [], []
    for e, t in zip(est_w2c, true_w2c, strict=True):
        moved = transform_world_to_cam(e, sim)
        rot_err.append(rotation_angle_deg(moved[:3, :3], t[:3, :3]))
        mc = -moved[:3, :3].T @ moved[:3, 3]
        tc = -t[:3, :3].T @ t[:3, 3]
        centre_err.append(float(np.linalg.norm(mc - tc)))
    radius = float(np.max(np.linalg.norm(true_c - true_c.mean(axis=0), axis=1)))
    return {"similarity": sim, "rotation_deg": np.array(rot_err), "centre": np.array(centre_err), "radius": radius}
