"""Adaptive density control (clone, split, prune, opacity reset) as a small strategy dataclass."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .gaussians import Gaussians, inverse_sigmoid


@dataclass
class DensifyStrategy:
    """Densify where screen-space position gradients are large, as 3DGS does.

    ``grad_threshold`` is in 3DGS's NDC units (pixel gradients times half the image size) so that the
    usual value carries over across resolutions. Sizes are fractions of the scene extent.
    """

    start: int = 500
    stop: int | None = None  # None: 60 % of the run (3DGS: 15k of 30k), then geometry only refines
    every: int = 100
    reset_every: int = 3_000
    grad_threshold: float = 0.0002
    dense_fraction: float = 0.01  # clone below this size, split above
    prune_opacity: float = 0.005
    prune_big_fraction: float = 0.1  # world-size prune after the first opacity reset
    max_gaussians: int = 1_000_000

    def init_state(self, n: int) -> dict[str, torch.Tensor]:
        return {"grad2d": torch.zeros(n), "count": torch.zeros(n)}

    def accumulate(self, state: dict, means2d: torch.Tensor, radii: torch.Tensor, width: int, height: int) -> None:
        """Record the screen-space gradient of one view (call after backward)."""
        if means2d.grad is None:
            return
        vis = (radii > 0).all(-1)
        g = means2d.grad[vis] * torch.tensor([width / 2, height / 2])
        state["grad2d"][vis] += g.norm(dim=-1)
        state["count"][vis] += 1

    def stop_for(self, iterations: int) -> int:
        return self.stop if self.stop is not None else min(15_000, int(0.6 * iterations))

    def step(
        self, it: int, iterations: int, model: Gaussians, opt: dict, state: dict, scene_extent: float
    ) -> dict[str, int]:
        """Apply density control after iteration ``it`` of ``iterations``; returns what changed."""
        done: dict[str, int] = {}
        stop = self.stop_for(iterations)
        if it < stop and it >= self.start and it % self.every == 0:
            done = self._densify_and_prune(it, model, opt, state, scene_extent)
            state.update(self.init_state(len(model)))
        if it < stop and it > 0 and it % self.reset_every == 0:
            with torch.no_grad():
                op = model.params["opacities"]
                op.copy_(torch.minimum(op, inverse_sigmoid(torch.tensor(0.01))))
            _reset_adam(opt["opacities"], model.params["opacities"])
            done["reset"] = 1
        return done

    def _densify_and_prune(self, it: int, model: Gaussians, opt: dict, state: dict, extent: float) -> dict:
        grads = state["grad2d"] / state["count"].clamp_min(1)
        big_grad = grads > self.grad_threshold
        max_scale = model.scales.detach().max(-1).values
        room = max(0, self.max_gaussians - len(model))
        clone = big_grad & (max_scale <= self.dense_fraction * extent)
        split = big_grad & (max_scale > self.dense_fraction * extent)
        # Respect the Gaussian budget: keep the strongest gradients.
        for mask in (clone, split):
            idx = mask.nonzero().squeeze(1)
            if len(idx) > room:
                mask[idx[grads[idx].argsort(descending=True)[room:]]] = False
            room -= int(mask.sum())
        n_clone, n_split = int(clone.sum()), int(split.sum())
        _append(model, opt, {k: v[clone].detach() for k, v in model.params.items()})
        pad = torch.zeros(n_clone, dtype=torch.bool)
        split = torch.cat([split, pad])
        if n_split:
            p = {k: v[split].detach() for k, v in model.params.items()}
            scales = torch.exp(p["scales"])
            from ..raster.projection import quat_to_rotmat

            rot = quat_to_rotmat(p["quats"])
            new = []
            for _ in range(2):
                offs = (rot @ (torch.randn_like(scales) * scales)[..., None]).squeeze(-1)
                q = dict(p)
                q["means"] = p["means"] + offs
                q["scales"] = torch.log(scales / 1.6)
                new.append(q)
            _append(model, opt, {k: torch.cat([new[0][k], new[1][k]]) for k in p})
            split = torch.cat([split, torch.zeros(2 * n_split, dtype=torch.bool)])
        prune = split | (model.opacities.detach() < self.prune_opacity)
        if it > self.reset_every:
            prune |= model.scales.detach().max(-1).values > self.prune_big_fraction * extent
        _keep(model, opt, ~prune)
        return {"cloned": n_clone, "split": n_split, "pruned": int(prune.sum()) - n_split}


def _reset_adam(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> None:
    st = optimizer.state.get(param)
    if st:
        st["exp_avg"].zero_()
        st["exp_avg_sq"].zero_()


def _replace(model: Gaussians, opt: dict, name: str, new: torch.Tensor, fn) -> None:
    """Swap a parameter for ``new`` and apply ``fn`` to its Adam moments the same way."""
    optimizer = opt[name]
    old = model.params[name]
    st = optimizer.state.pop(old, None)
    new = new.detach().requires_grad_(True)
    optimizer.param_groups[0]["params"] = [new]
    if st:
        st["exp_avg"] = fn(st["exp_avg"])
        st["exp_avg_sq"] = fn(st["exp_avg_sq"])
        optimizer.state[new] = st
    model.params[name] = new


def _append(model: Gaussians, opt: dict, extra: dict[str, torch.Tensor]) -> None:
    n = next(iter(extra.values())).shape[0]
    if n == 0:
        return
    for k, v in extra.items():
        old = model.params[k].detach()
        _replace(model, opt, k, torch.cat([old, v]), lambda s, n=n: torch.cat([s, s.new_zeros((n,) + s.shape[1:])]))


def _keep(model: Gaussians, opt: dict, mask: torch.Tensor) -> None:
    for k in list(model.params):
        _replace(model, opt, k, model.params[k].detach()[mask], lambda s: s[mask])
