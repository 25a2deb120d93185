"""``prd mesh`` on broken Gaussian files: a clear message and exit code 2 (bad input), before any heavy work."""

from __future__ import annotations

import pytest
import torch

from prd_blender.trainer.asset.synthetic import sphere_gaussians, write_run_folder
from prd_blender.trainer.cli import main


def _with(model, **changes):
    params = {k: v.detach().clone() for k, v in model.params.items()}
    params.update(changes)
    return type(model)(params)


def _nan_at(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().clone()
    t.view(-1)[7] = float("nan")
    return t


G = sphere_gaussians(n=300)
N = len(G)
CASES = {
    "all_transparent": (_with(G, opacities=torch.full((N,), -12.0)), "all transparent"),
    "nan_positions": (_with(G, means=_nan_at(G.params["means"])), "NaN or infinite means"),
    "nan_scales": (_with(G, scales=_nan_at(G.params["scales"])), "NaN or infinite scales"),
    "nan_albedo": (_with(G, albedo=_nan_at(G.params["albedo"])), "NaN or infinite albedo"),
    "huge_scales": (_with(G, scales=torch.full((N, 3), 8.0)), "absurd scales"),
    # linear scales written where 3DGS expects log: exp(0.01) ~ 1, every Gaussian as big as the object
    "linear_scales": (_with(G, scales=torch.full((N, 3), 0.01)), "probably not log-scale"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_prd_mesh_rejects_bad_gaussians(case, tmp_path, capsys):
    model, message = CASES[case]
    out = write_run_folder(tmp_path / case, model)
    rc = main(["mesh", str(out), "--quality", "preview", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert message in err
    assert err.startswith("prd: error:") and "Traceback" not in err
    assert not (out / "mesh.glb").exists()


def test_sane_scales_pass_the_check():
    # the sphere's discs are ~2 % of its size: far from the "absurd" thresholds
    from prd_blender.trainer.asset.surface import validate_gaussians

    assert validate_gaussians(G).all()
