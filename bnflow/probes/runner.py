"""All probes of one step of one run, as tidy rows: the same code serves dense probing and the checkpoint-wise step.

At step t the probes see the weights θ_t, the step's own mini-batch and, for the noisy variants, the step's own noise
(the noise generator is reset to its state before step t's forward before every probe pass). Tracked channels and
units are drawn from the run's probe stream keyed by layer, so dense and checkpoint-wise probes track the same ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bnflow import seeds
from bnflow.config import CurvatureConfig, ModelProbeConfig, ProbeOptions
from bnflow.curvature import bn_layers, curvature_probe, theorem41_check, theorem42_check
from bnflow.probes.activations import channel_stats, choose_units, record_activations, unit_summaries, unit_values
from bnflow.probes.ics import ics_probe, ics_rows, preceding_params_in_blocks
from bnflow.probes.landscape import landscape_probe
from bnflow.probes.state import probe_pass, probe_session

TABLES = ("landscape", "ics", "act_channels", "act_units")
CURVATURE_TABLES = ("curvature", "theorem41", "theorem42")
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ProbePlan:
    """What to measure for one run: absolute step sizes, layers, and the options of params.yaml."""

    etas: tuple[float, ...]
    ics_layers: tuple[int, ...]
    activation_layers: tuple[int, ...]
    options: ProbeOptions
    lr: float
    direction: str = "gradient"
    curvature: CurvatureConfig | None = None
    activation_every: int = 0  # dense probes: activations only at steps that are multiples of it (0: every probe)

    @classmethod
    def build(cls, model_cfg: ModelProbeConfig, options: ProbeOptions, lr: float, direction: str = "gradient",
              curvature: CurvatureConfig | None = None):
        return cls(tuple(f * lr for f in model_cfg.eta_factors), model_cfg.ics_layers, model_cfg.activation_layers,
                   options, lr, direction, curvature if curvature is not None and curvature.enabled else None,
                   getattr(model_cfg, "activation_every", 0))

    def records_activations(self, step: int) -> bool:
        """Whether the probes at `step` record activations (act_channels, act_units)."""
        return bool(self.activation_layers and (self.options.n_channels or self.options.n_units)
                    and (not self.activation_every or step % self.activation_every == 0))


def weight_params(model: nn.Module) -> list[nn.Parameter]:
    """Conv/linear weights and biases only (norm γ/β excluded): the `params: weights` option."""
    return [p for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) for p in m.parameters()
            if p.requires_grad]


class Prober:
    """Computes every table of TABLES at one step; holds the tracked channels/units of the run."""

    def __init__(self, plan: ProbePlan, model: nn.Module, loss_fn: LossFn, *, base: int, seed: int,
                 generators: Sequence[torch.Generator] = ()):
        self.plan, self.model, self.loss_fn = plan, model, loss_fn
        self.base, self.seed, self.generators = base, seed, list(generators)
        opts = plan.options
        self.params = weight_params(model) if opts.params == "weights" else [
            p for p in model.parameters() if p.requires_grad]
        self.preceding = preceding_params_in_blocks(model, include_norm=opts.ics_update == "all")
        self.channels: dict[int, list[int]] = {}
        self.units: dict[int, list[tuple[int, ...]]] = {}

    @classmethod
    def for_task(cls, plan: ProbePlan, task, *, base: int, seed: int) -> Prober:
        """The prober of one run of a training task (bnflow.tasks): its model, loss and noise generators."""
        return cls(plan, task.model, lambda m, x, y: task.loss(m(x), y), base=base, seed=seed,
                   generators=task.generators)

    def _stream(self, *keys: int) -> torch.Generator:
        return seeds.torch_generator(self.base, self.seed, "probe", *keys)

    def _track(self, acts: Mapping[int, torch.Tensor]) -> None:
        for k, a in acts.items():
            if k not in self.channels:
                c = a.shape[1]
                perm = torch.randperm(c, generator=self._stream(1, k))
                self.channels[k] = sorted(perm[:min(self.plan.options.n_channels, c)].tolist())
                n_units = min(self.plan.options.n_units, int(torch.tensor(a.shape[1:]).prod()))
                self.units[k] = choose_units(tuple(a.shape[1:]), n_units, self._stream(2, k)) if n_units else []

    def before_forward(self, noise_state: Sequence[torch.Tensor] | None) -> Callable[[], None] | None:
        """A hook that puts the noise generators back where they were before the probed step's forward."""
        if not self.generators or noise_state is None:
            return None

        def reset() -> None:
            for g, s in zip(self.generators, noise_state, strict=True):
                g.set_state(s)
        return reset

    def gradients(self, x: torch.Tensor, y: torch.Tensor, before_forward) -> dict[nn.Parameter, torch.Tensor]:
        """∇L_B(θ) for every trainable parameter, in fp32 with TF32 off (checkpoint-wise probes have no .grad)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        with probe_session(self.model, self.generators) as snap:
            _, grads = probe_pass(self.model, self.loss_fn, x, y, snap, params, before_forward)
        return dict(zip(params, grads))

    def random_direction(self, step: int, norm: torch.Tensor) -> list[torch.Tensor]:
        """A Gaussian direction over the probed parameters, scaled to ‖g‖ so step sizes stay comparable."""
        g = self._stream(3, step)
        d = [torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.device) for p in self.params]
        scale = norm / torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in d]))
        return [t * scale.to(t.dtype) for t in d]

    def probe(self, step: int, x: torch.Tensor, y: torch.Tensor, *,
              grads: Mapping[nn.Parameter, torch.Tensor] | None = None,
              noise_state: Sequence[torch.Tensor] | None = None,
              acts: Mapping[int, torch.Tensor] | None = None) -> dict[str, list[dict[str, Any]]]:
        """Rows of every table at `step`. `grads`/`acts` come from the training step itself when probing densely."""
        plan, hook = self.plan, self.before_forward(noise_state)
        if grads is None:
            grads = self.gradients(x, y, hook)
        g = [grads[p] for p in self.params]
        direction = None
        if plan.direction == "random":
            direction = self.random_direction(step, torch.linalg.vector_norm(torch.stack(
                [torch.linalg.vector_norm(t.float()) for t in g])))
        out: dict[str, list[dict[str, Any]]] = {name: [] for name in TABLES}
        land = landscape_probe(self.model, self.loss_fn, x, y, etas=plan.etas, params=self.params, grad=g,
                               before_forward=hook, generators=self.generators, direction=direction)
        out["landscape"] = [r | {"loss0": land.loss0, "grad_norm": land.grad_norm, "direction": plan.direction}
                            for r in land.to_rows(step)]
        if plan.ics_layers:
            results = ics_probe(self.model, self.loss_fn, x, y, lr=plan.lr, layers=plan.ics_layers,
                                layer_params=self.model.layer_params, preceding_params=self.preceding, grads=grads,
                                before_forward=hook, generators=self.generators)
            out["ics"] = ics_rows(results, step)
        if plan.records_activations(step):
            if acts is None:
                acts = record_activations(self.model, x, layers=plan.activation_layers,
                                          point=plan.options.activation_point, before_forward=hook,
                                          generators=self.generators)
            self._track(acts)
            out["act_channels"] = [{"step": step} | r for r in channel_stats(acts)
                                   if r["channel"] in self.channels[r["layer"]]]
            out["act_units"] = [{"step": step} | r for r in unit_summaries(unit_values(acts, self.units))]
        if plan.curvature is not None:
            out |= self.curvature(step, x, y, hook)
        return out

    def curvature(self, step: int, x: torch.Tensor, y: torch.Tensor, hook) -> dict[str, list[dict[str, Any]]]:
        """λ_max / batch sharpness vs 2/lr, and Theorems 4.1 and 4.2 on every BN layer (PROTOCOL §8)."""
        cv, common = self.plan.curvature, {"before_forward": hook, "generators": self.generators}
        res = curvature_probe(self.model, self.loss_fn, x, y, params=self.params, k=cv.eig_k, iters=cv.eig_iters,
                              tol=cv.eig_tol, method=cv.eig_method, generator=self._stream(4, step), **common)
        out = {"curvature": [res.to_row(step, lr=self.plan.lr) | {"two_over_lr": 2.0 / self.plan.lr}],
               "theorem41": [{"step": step} | r for r in theorem41_check(self.model, self.loss_fn, x, y, **common)],
               "theorem42": []}
        channels = {k: sorted(torch.randperm(bn.num_features, generator=self._stream(5, k))
                              [:cv.theorem42_channels].tolist()) for k, bn in bn_layers(self.model)}
        if cv.theorem42_channels and channels:
            out["theorem42"] = [{"step": step} | r for r in theorem42_check(
                self.model, self.loss_fn, x, y, channels=channels, **common)]
        return out
