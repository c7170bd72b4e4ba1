"""Probes (bnflow/probes) on tiny CPU networks, each checked against an independent computation."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnflow.probes import (
    ProbeError,
    activation_stats,
    channel_stats,
    choose_units,
    fp32_exact,
    gradient_shift,
    ics_probe,
    landscape_probe,
    preceding_params_in_blocks,
    preserved,
    record_activations,
    recording,
    unit_histograms,
    unit_summaries,
    unit_values,
)

# ---------------------------------------------------------------- tiny models with the bnflow model interface


class Noise(nn.Module):
    """Additive Gaussian noise from an explicit generator in train mode (stands in for noisy BN)."""

    def __init__(self) -> None:
        super().__init__()
        self.gen: torch.Generator | None = None

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if not self.training or self.gen is None:
            return a
        return a + 0.3 * torch.randn(a.shape, generator=self.gen, dtype=a.dtype)


class TinyNet(nn.Module):
    """blocks[k-1] = Sequential(layer, norm, [relu], [pool]) for layer #k; optional classifier after the blocks."""

    def __init__(self, blocks: list[nn.Sequential], classifier: nn.Module | None = None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.classifier = classifier

    @property
    def norms(self) -> list[nn.Module]:
        return [b[1] for b in self.blocks]

    def layer_params(self, k: int) -> list[nn.Parameter]:
        layer = self.blocks[k - 1][0]
        return [layer.weight, layer.bias]

    def set_noise_generator(self, gen: torch.Generator) -> None:
        for m in self.modules():
            if isinstance(m, Noise):
                m.gen = gen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.classifier is None else self.classifier(torch.flatten(x, 1))


def _init(model: nn.Module, seed: int, dtype: torch.dtype) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    model = model.to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=dtype) * 0.6 + (1.0 if p.dim() == 1 and p.numel() else 0))
    return model


def make_mlp(norm: bool = True, noise: bool = False, dtype: torch.dtype = torch.float32) -> TinyNet:
    """3 linear layers 4 -> 6 -> 5 -> 3, BN after the first two (the DLN pattern: none after the last)."""

    def normed(n: int) -> nn.Module:
        layers = ([nn.BatchNorm1d(n)] if norm else [nn.Identity()]) + ([Noise()] if noise else [])
        return layers[0] if len(layers) == 1 else nn.Sequential(*layers)

    with torch.random.fork_rng(devices=[]):  # nn constructors draw from the global RNG; keep it untouched
        blocks = [
            nn.Sequential(nn.Linear(4, 6), normed(6), nn.ReLU()),
            nn.Sequential(nn.Linear(6, 5), normed(5), nn.ReLU()),
            nn.Sequential(nn.Linear(5, 3), nn.Identity()),
        ]
        return _init(TinyNet(blocks), 1, dtype)


def make_conv(norm: bool = True, dtype: torch.dtype = torch.float32) -> TinyNet:
    """2 conv blocks (in-place ReLU in the first, max-pool in the second) + Linear classifier, input (N, 2, 4, 4)."""
    with torch.random.fork_rng(devices=[]):
        blocks = [
            nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3) if norm else nn.Identity(), nn.ReLU(True)),
            nn.Sequential(
                nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4) if norm else nn.Identity(), nn.ReLU(), nn.MaxPool2d(2)
            ),
        ]
        return _init(TinyNet(blocks, nn.Linear(16, 3)), 2, dtype)


def ce_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def loss_value(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(ce_loss(model, x, y))


def data(shape: tuple[int, ...], n: int = 8, seed: int = 3, dtype: torch.dtype = torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *shape), generator=gen, dtype=dtype) * 2.0 + 1.5  # far from BN's initial running stats
    y = torch.randint(0, 3, (n,), generator=gen)
    return x, y


MODELS = {"mlp": (make_mlp, (4,)), "conv": (make_conv, (2, 4, 4))}


def autograd_grads(model: nn.Module, x, y, params_of=lambda m: list(m.parameters())) -> list[torch.Tensor]:
    """Gradient on a deep copy with loss.backward() (independent of the probes' autograd.grad path)."""
    ref = copy.deepcopy(model)
    ce_loss(ref, x, y).backward()
    return [p.grad.clone() for p in params_of(ref)]


def state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {k: v.clone() for k, v in model.state_dict(keep_vars=True).items()}
    out.update({f"{n}.grad": p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    return out


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------- landscape (paper §3.2)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_landscape_matches_manual_update_and_backward(name):
    make, shape = MODELS[name]
    model = make()
    x, y = data(shape)
    etas = [0.05, 0.1, 0.4]
    res = landscape_probe(model, ce_loss, x, y, etas=etas)

    g = autograd_grads(model, x, y)
    g_norm = math.sqrt(sum(float((t.double() ** 2).sum()) for t in g))
    assert res.grad_norm == pytest.approx(g_norm, rel=1e-6)
    assert res.loss0 == pytest.approx(loss_value(copy.deepcopy(model), x, y), rel=1e-6)
    for i, eta in enumerate(etas):
        moved = copy.deepcopy(model)
        with torch.no_grad():
            for p, gi in zip(moved.parameters(), g):
                p -= eta * gi
        loss = ce_loss(moved, x, y)
        loss.backward()
        change = math.sqrt(sum(float(((p.grad - gi).double() ** 2).sum()) for p, gi in zip(moved.parameters(), g)))
        assert res.loss[i] == pytest.approx(loss.item(), rel=1e-5)
        assert res.grad_change[i] == pytest.approx(change, rel=1e-4)
        assert res.ratio[i] == pytest.approx(change / (eta * g_norm), rel=1e-4)
    assert res.beta_eff == pytest.approx(max(res.grad_change[i] / (e * g_norm) for i, e in enumerate(etas)), rel=1e-12)
    rows = res.to_rows(step=7)
    assert [r["eta"] for r in rows] == etas and all(r["step"] == 7 for r in rows)
    summary = res.summary_row(step=7)
    assert summary["loss_min"] == min(res.loss) and summary["grad_change_max"] == max(res.grad_change)


def test_landscape_matches_finite_differences_on_a_parameter_subset():
    """g and ∇L(θ − ηg) from central differences of the loss alone (float64), probing the first weight only."""
    model = make_mlp(dtype=torch.float64)
    x, y = data((4,), dtype=torch.float64)
    w = model.layer_params(1)[0]
    eta, h = 0.3, 1e-6

    def loss_at(values: torch.Tensor) -> float:
        m = copy.deepcopy(model)
        with torch.no_grad():
            m.layer_params(1)[0].copy_(values)
            return loss_value(m, x, y)

    def fd_grad(values: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(values)
        for i in range(values.numel()):
            e = torch.zeros_like(values).view(-1)
            e[i] = h
            e = e.view_as(values)
            out.view(-1)[i] = (loss_at(values + e) - loss_at(values - e)) / (2 * h)
        return out

    theta = w.detach().clone()
    g = fd_grad(theta)
    g_eta = fd_grad(theta - eta * g)
    res = landscape_probe(model, ce_loss, x, y, etas=[eta], params=[w])
    assert res.grad_norm == pytest.approx(float(g.norm()), rel=1e-7)
    assert res.loss[0] == pytest.approx(loss_at(theta - eta * g), rel=1e-8)
    assert res.grad_change[0] == pytest.approx(float((g_eta - g).norm()), rel=1e-6)
    assert res.beta_eff == pytest.approx(float((g_eta - g).norm()) / (eta * float(g.norm())), rel=1e-6)
    # The other parameters were not moved: moving all of them gives a different loss.
    assert landscape_probe(model, ce_loss, x, y, etas=[eta]).loss[0] != pytest.approx(res.loss[0], rel=1e-3)


def test_landscape_grad_argument_equals_recomputing():
    model = make_conv()
    x, y = data((2, 4, 4))
    weights = [model.layer_params(k)[0] for k in (1, 2)]
    g = autograd_grads(model, x, y, lambda m: [m.layer_params(k)[0] for k in (1, 2)])
    a = landscape_probe(model, ce_loss, x, y, etas=[0.1, 0.2], params=weights)
    b = landscape_probe(model, ce_loss, x, y, etas=[0.1, 0.2], params=weights, grad=g)
    assert a.loss0 == pytest.approx(b.loss0, rel=1e-7)
    np.testing.assert_allclose(a.loss, b.loss, rtol=1e-6)
    np.testing.assert_allclose(a.grad_change, b.grad_change, rtol=1e-4)
    assert a.beta_eff == pytest.approx(b.beta_eff, rel=1e-4)


def test_landscape_uses_batch_statistics_in_train_mode_and_keeps_eval_mode():
    model = make_conv()  # fresh running stats (0, 1); the data are far from them
    x, y = data((2, 4, 4))
    res = landscape_probe(model, ce_loss, x, y, etas=[0.1])
    train_loss = loss_value(copy.deepcopy(model).train(), x, y)
    eval_loss = loss_value(copy.deepcopy(model).eval(), x, y)
    assert abs(train_loss - eval_loss) > 0.1  # the check below can tell the two modes apart
    assert res.loss0 == pytest.approx(train_loss, rel=1e-6)
    assert all(m.training for m in model.modules())

    model.eval()
    res_eval = landscape_probe(model, ce_loss, x, y, etas=[0.1])
    assert res_eval.loss0 == pytest.approx(eval_loss, rel=1e-6)
    assert not any(m.training for m in model.modules())


def test_landscape_zero_gradient_gives_nan_ratio():
    model = make_mlp()
    x, y = data((4,))
    zero = [torch.zeros_like(p) for p in model.parameters()]
    res = landscape_probe(model, ce_loss, x, y, etas=[0.1], grad=zero)
    assert res.grad_norm == 0.0 and math.isnan(res.ratio[0]) and math.isnan(res.beta_eff)
    assert res.loss[0] == pytest.approx(res.loss0, rel=1e-7)  # θ − η·0 = θ


def test_parameter_unused_by_the_loss_counts_as_zero_gradient():
    model = make_mlp()
    x, y = data((4,))
    used = list(model.parameters())
    model.register_parameter("unused", nn.Parameter(torch.ones(2)))
    a = landscape_probe(model, ce_loss, x, y, etas=[0.1])
    b = landscape_probe(model, ce_loss, x, y, etas=[0.1], params=used)
    assert a.grad_norm == pytest.approx(b.grad_norm, rel=1e-7)
    assert a.grad_change[0] == pytest.approx(b.grad_change[0], rel=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [{"etas": []}, {"etas": [0.1, 0.0]}, {"etas": [-1.0]}, {"etas": [0.1], "params": [nn.Parameter(torch.ones(2))]},
     {"etas": [0.1], "grad": [torch.zeros(1)]}],
)  # fmt: skip
def test_landscape_rejects_bad_arguments(kwargs):
    model = make_mlp()
    x, y = data((4,))
    with pytest.raises(ProbeError):
        landscape_probe(model, ce_loss, x, y, **kwargs)


def test_loss_fn_must_return_a_scalar():
    model = make_mlp()
    x, y = data((4,))
    with pytest.raises(ProbeError, match="0-d"):
        landscape_probe(model, lambda m, a, b: F.cross_entropy(m(a), b, reduction="none"), x, y, etas=[0.1])


# ---------------------------------------------------------------- ICS (Definition 2.1)


def _ics_reference(model: TinyNet, x, y, lr: float, k: int, include_norm: bool) -> tuple[float, float, float]:
    """G' by applying the earlier blocks' SGD update by hand on a deep copy, then loss.backward()."""
    base = copy.deepcopy(model)
    ce_loss(base, x, y).backward()
    G = torch.cat([p.grad.flatten() for p in base.layer_params(k)]).double()
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for j in range(1, k):
            src = base.blocks[j - 1].parameters() if include_norm else base.layer_params(j)
            dst = moved.blocks[j - 1].parameters() if include_norm else moved.layer_params(j)
            for p_dst, p_src in zip(dst, src):
                p_dst -= lr * p_src.grad
    ce_loss(moved, x, y).backward()
    G2 = torch.cat([p.grad.flatten() for p in moved.layer_params(k)]).double()
    l2 = float((G - G2).norm())
    return l2, l2 / float(G.norm()), float(F.cosine_similarity(G, G2, dim=0))


@pytest.mark.parametrize("name,layers", [("mlp", [1, 2, 3]), ("conv", [1, 2])])
@pytest.mark.parametrize("include_norm", [True, False])
def test_ics_matches_explicit_update_of_earlier_layers(name, layers, include_norm):
    make, shape = MODELS[name]
    model = make()
    x, y = data(shape)
    lr = 0.5
    res = ics_probe(
        model, ce_loss, x, y, lr=lr, layers=layers, layer_params=model.layer_params,
        preceding_params=preceding_params_in_blocks(model, include_norm=include_norm),
    )  # fmt: skip
    assert [r.layer for r in res] == layers
    assert res[0].l2 == 0.0 and res[0].rel == 0.0 and res[0].cos == 1.0  # nothing precedes layer 1
    for r in res[1:]:
        l2, rel, cos = _ics_reference(model, x, y, lr, r.layer, include_norm)
        assert r.l2 > 0
        assert r.l2 == pytest.approx(l2, rel=1e-4)
        assert r.rel == pytest.approx(rel, rel=1e-4)
        assert r.cos == pytest.approx(cos, abs=1e-6)
    assert all(-1.0 <= r.cos <= 1.0 for r in res)


def test_ics_with_and_without_norm_parameters_differ_and_grads_argument_matches():
    model = make_mlp()
    x, y = data((4,))
    kw = {"lr": 0.5, "layers": [3], "layer_params": model.layer_params}
    with_norm = ics_probe(model, ce_loss, x, y, preceding_params=preceding_params_in_blocks(model), **kw)[0]
    weights_only = preceding_params_in_blocks(model, include_norm=False)
    without = ics_probe(model, ce_loss, x, y, preceding_params=weights_only, **kw)[0]
    assert with_norm.l2 != pytest.approx(without.l2, rel=1e-3)
    ref = copy.deepcopy(model)
    ce_loss(ref, x, y).backward()
    grads = {p: q.grad.clone() for p, q in zip(model.parameters(), ref.parameters())}
    given = ics_probe(model, ce_loss, x, y, preceding_params=preceding_params_in_blocks(model), grads=grads, **kw)[0]
    assert given.l2 == pytest.approx(with_norm.l2, rel=1e-5) and given.cos == pytest.approx(with_norm.cos, abs=1e-7)
    with pytest.raises(ProbeError, match="grads lacks"):
        ics_probe(model, ce_loss, x, y, preceding_params=preceding_params_in_blocks(model), grads={}, **kw)


def test_preceding_params_in_blocks_lists_forward_order():
    model = make_mlp()
    pre = preceding_params_in_blocks(model)
    assert pre(1) == []
    b1, b2 = model.blocks[0], model.blocks[1]
    expected = [b1[0].weight, b1[0].bias, b1[1].weight, b1[1].bias, b2[0].weight, b2[0].bias, b2[1].weight, b2[1].bias]
    assert [id(p) for p in pre(3)] == [id(p) for p in expected]
    weights = preceding_params_in_blocks(model, include_norm=False)(3)
    assert [id(p) for p in weights] == [id(p) for p in (b1[0].weight, b1[0].bias, b2[0].weight, b2[0].bias)]
    with pytest.raises(ProbeError):
        pre(4)


def test_ics_rejects_overlapping_preceding_params():
    model = make_mlp()
    x, y = data((4,))
    with pytest.raises(ProbeError, match="overlaps"):
        ics_probe(model, ce_loss, x, y, lr=0.1, layers=[2], layer_params=model.layer_params,
                  preceding_params=lambda k: model.layer_params(k))  # fmt: skip


def test_gradient_shift_closed_forms_and_zero_cases():
    def shift(a, b):
        return gradient_shift([torch.tensor(a, dtype=torch.float32)], [torch.tensor(b, dtype=torch.float32)]).tolist()

    assert shift([3.0, 4.0], [3.0, 4.0]) == [0.0, 0.0, 1.0, 5.0, 5.0]
    assert shift([3.0, 4.0], [-3.0, -4.0]) == pytest.approx([10.0, 2.0, -1.0, 5.0, 5.0])
    assert shift([1.0, 0.0], [0.0, 2.0]) == pytest.approx([math.sqrt(5), math.sqrt(5), 0.0, 1.0, 2.0])
    assert shift([0.0, 0.0], [0.0, 0.0]) == [0.0, 0.0, 1.0, 0.0, 0.0]
    l2, rel, cos, _, _ = shift([0.0, 0.0], [1.0, 0.0])
    assert l2 == 1.0 and rel == math.inf and math.isnan(cos)
    l2, rel, cos, _, _ = shift([2.0, 0.0], [0.0, 0.0])
    assert rel == 1.0 and math.isnan(cos)
    # Nearly parallel vectors: rounding must not push cos past 1.
    v = torch.full((1000,), 0.1)
    assert gradient_shift([v], [v * (1 + 1e-7)])[2] <= 1.0
    # Several tensors behave as one concatenated vector.
    two = gradient_shift([torch.tensor([3.0]), torch.tensor([4.0])], [torch.tensor([0.0]), torch.tensor([4.0])])
    assert two.tolist() == pytest.approx([3.0, 0.6, 0.8, 5.0, 4.0])


# ---------------------------------------------------------------- bit-identical training, hooks, RNG, precision


def _train(model: TinyNet, gen: torch.Generator, batches, probe=None) -> tuple[dict, torch.Tensor]:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for step, (x, y) in enumerate(batches):
        noise_state = gen.get_state()
        opt.zero_grad()
        ce_loss(model, x, y).backward()
        if probe is not None and step == 1:  # where the trainer probes: at θ_t, between backward and step
            before = state_tensors(model)
            grad_objects = [p.grad for p in model.parameters()]
            probe(model, x, y, lambda s=noise_state: gen.set_state(s))
            assert_same_state(before, state_tensors(model))
            assert all(p.grad is g for p, g in zip(model.parameters(), grad_objects))
        opt.step()
    return state_tensors(model), gen.get_state()


def test_probes_leave_training_bit_identical():
    batches = [data((4,), seed=s) for s in range(4)]
    calls = []

    def probe(model, x, y, reset_noise):
        gen = model.blocks[0][1][1].gen
        calls.append(landscape_probe(model, ce_loss, x, y, etas=[0.1, 1.0], before_forward=reset_noise,
                                     generators=[gen]))  # fmt: skip
        calls.append(ics_probe(model, ce_loss, x, y, lr=0.1, layers=[1, 2, 3], layer_params=model.layer_params,
                               preceding_params=preceding_params_in_blocks(model), before_forward=reset_noise,
                               generators=[gen]))  # fmt: skip
        calls.append(activation_stats(model, x, layers=[1, 2], units=[(0,)], before_forward=reset_noise,
                                      generators=[gen]))  # fmt: skip

    runs = []
    for with_probe in (False, True):
        model = make_mlp(noise=True)
        gen = torch.Generator().manual_seed(11)
        model.set_noise_generator(gen)
        global_state = torch.random.get_rng_state()
        runs.append(_train(model, gen, batches, probe if with_probe else None))
        assert torch.equal(global_state, torch.random.get_rng_state())
    assert len(calls) == 3
    assert_same_state(runs[0][0], runs[1][0])
    assert torch.equal(runs[0][1], runs[1][1])


def test_probe_does_not_touch_global_rng_or_modes():
    model = make_mlp()
    model.blocks[1].eval()  # mixed modes must come back as they were
    modes = [m.training for m in model.modules()]
    x, y = data((4,))
    state = torch.random.get_rng_state()

    def dropout_loss(m, a, b):  # draws from the global CPU generator
        return F.cross_entropy(F.dropout(m(a), 0.5, training=True), b)

    landscape_probe(model, dropout_loss, x, y, etas=[0.1])
    assert torch.equal(state, torch.random.get_rng_state())
    assert modes == [m.training for m in model.modules()]


def test_preserved_restores_after_an_exception():
    model = make_conv()
    x, y = data((2, 4, 4))
    ce_loss(model, x, y).backward()
    gen = torch.Generator().manual_seed(5)
    before, gen_state = state_tensors(model), gen.get_state()
    with pytest.raises(RuntimeError, match="boom"):
        with preserved(model, [gen]):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1.0)
            ce_loss(model, x, y)  # updates BN running statistics
            for i, p in enumerate(model.parameters()):
                if i % 2:
                    p.grad.mul_(2.0)  # in place: the original grad object must get its values back
                else:
                    p.grad = None
            model.eval()
            torch.rand(2, generator=gen)
            raise RuntimeError("boom")
    assert_same_state(before, state_tensors(model))
    assert torch.equal(gen_state, gen.get_state()) and model.training


def test_before_forward_runs_before_every_forward_pass():
    model = make_mlp(noise=True)
    gen = torch.Generator().manual_seed(4)
    model.set_noise_generator(gen)
    x, y = data((4,))
    log: list[str] = []
    model.register_forward_pre_hook(lambda m, args: log.append("F"))
    step_state = gen.get_state()

    def reset():
        log.append("B")
        gen.set_state(step_state)

    res = landscape_probe(model, ce_loss, x, y, etas=[0.1, 0.2, 0.4], before_forward=reset)
    assert log == ["B", "F"] * 4
    # Every pass saw the step's noise: loss0 equals a forward with the generator at the step's state.
    gen.set_state(step_state)
    assert res.loss0 == pytest.approx(loss_value(copy.deepcopy(model), x, y), rel=1e-6)

    log.clear()
    landscape_probe(model, ce_loss, x, y, etas=[0.1, 0.2], grad=[torch.ones_like(p) for p in model.parameters()],
                    before_forward=reset)  # fmt: skip
    assert log == ["B", "F"] * 3
    log.clear()
    ics_probe(model, ce_loss, x, y, lr=0.1, layers=[1, 2, 3], layer_params=model.layer_params,
              preceding_params=preceding_params_in_blocks(model), before_forward=reset)  # fmt: skip
    assert log == ["B", "F"] * 3  # gradients at θ_t, then layers 2 and 3 (layer 1 needs no pass)
    log.clear()
    activation_stats(model, x, layers=[1], units=[(0,)], before_forward=reset)
    assert log == ["B", "F"]


def test_without_before_forward_every_pass_starts_from_the_saved_generator_state():
    model = make_mlp(noise=True)
    gen = torch.Generator().manual_seed(9)
    model.set_noise_generator(gen)
    x, y = data((4,))
    start = gen.get_state()
    res = landscape_probe(model, ce_loss, x, y, etas=[0.2], generators=[gen])
    assert torch.equal(gen.get_state(), start)
    ref = copy.deepcopy(model)
    ref.set_noise_generator(gen)  # deepcopy copied the generator object
    gen.set_state(start)
    ce_loss(ref, x, y).backward()
    gen.set_state(start)
    with torch.no_grad():
        for p in ref.parameters():
            p -= 0.2 * p.grad
    assert res.loss[0] == pytest.approx(loss_value(ref, x, y), rel=1e-5)


def test_probe_runs_in_fp32_without_tf32_or_autocast_and_restores_flags():
    b = torch.backends
    model = make_conv()
    x, y = data((2, 4, 4))
    seen = []

    def loss_fn(m, a, t):
        seen.append((b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, torch.is_autocast_enabled("cpu")))
        return ce_loss(m, a, t)

    old = (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32)
    try:
        b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32 = True, True
        plain = landscape_probe(model, ce_loss, x, y, etas=[0.1])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            res = landscape_probe(model, loss_fn, x, y, etas=[0.1])
            assert torch.is_autocast_enabled("cpu")
        assert set(seen) == {(False, False, False)}
        assert (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32) == (True, True)
        assert res.loss0 == plain.loss0 and res.grad_change[0] == plain.grad_change[0]
    finally:
        b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32 = old


@pytest.mark.skipif(not hasattr(torch.backends.cudnn, "conv"), reason="fp32_precision API needs torch >= 2.9")
def test_fp32_exact_restores_flags_set_through_the_new_api():
    """With mixed new-API flags the legacy getters raise; fp32_exact must switch TF32 off and restore them."""
    b = torch.backends
    conv, rnn, matmul = b.cudnn.conv, b.cudnn.rnn, b.cuda.matmul
    old_legacy = (matmul.allow_tf32, b.cudnn.allow_tf32)
    try:
        conv.fp32_precision, rnn.fp32_precision, matmul.fp32_precision = "tf32", "ieee", "tf32"
        with pytest.raises(RuntimeError):
            _ = b.cudnn.allow_tf32  # the state this test is about
        with fp32_exact():
            assert (conv.fp32_precision, rnn.fp32_precision, matmul.fp32_precision) == ("ieee",) * 3
        assert (conv.fp32_precision, rnn.fp32_precision, matmul.fp32_precision) == ("tf32", "ieee", "tf32")
    finally:
        matmul.allow_tf32, b.cudnn.allow_tf32 = old_legacy
        assert (matmul.allow_tf32, b.cudnn.allow_tf32) == old_legacy


# ---------------------------------------------------------------- activations


def _direct_conv_points(model: TinyNet, x: torch.Tensor) -> dict[str, dict[int, torch.Tensor]]:
    """Pre/post-ReLU activations by running each block's children by hand on a copy (train mode)."""
    m = copy.deepcopy(model)
    pre, post = {}, {}
    h = x
    with torch.no_grad():
        for k, block in enumerate(m.blocks, start=1):
            z = block[1](block[0](h))
            pre[k] = z.clone()
            post[k] = torch.clamp(z, min=0)
            h = post[k] if len(block) == 3 else block[3](post[k])
    return {"pre_relu": pre, "post_relu": post}


@pytest.mark.parametrize("point", ["pre_relu", "post_relu"])
def test_activation_stats_match_block_outputs(point):
    model = make_conv()
    x, _ = data((2, 4, 4), n=16)
    before = state_tensors(model)
    units = {1: [(0, 1, 2), (2, 3, 3)], 2: [(3, 0, 0)]}
    channel_rows, unit_rows = activation_stats(model, x, layers=[1, 2], units=units, point=point)
    direct = _direct_conv_points(model, x)[point]
    for row in channel_rows:
        a = direct[row["layer"]][:, row["channel"]].double()
        assert row["mean"] == pytest.approx(float(a.mean()), rel=1e-6, abs=1e-7)
        assert row["var"] == pytest.approx(float(((a - a.mean()) ** 2).mean()), rel=1e-5, abs=1e-7)
    assert len(channel_rows) == 3 + 4
    assert [(r["layer"], r["unit"]) for r in unit_rows] == [(1, "0,1,2"), (1, "2,3,3"), (2, "3,0,0")]
    for row in unit_rows:
        c, hh, ww = (int(i) for i in row["unit"].split(","))
        v = np.sort(direct[row["layer"]][:, c, hh, ww].double().numpy())
        # q50 of 16 values = midpoint of the 8th and 9th order statistics (linear interpolation).
        assert row["q50"] == pytest.approx((v[7] + v[8]) / 2, abs=1e-6)
        assert row["q05"] == pytest.approx(v[0] + 0.75 * (v[1] - v[0]), abs=1e-6)  # position 0.05 * 15 = 0.75
        assert row["mean"] == pytest.approx(v.mean(), abs=1e-6)
        assert row["std"] == pytest.approx(math.sqrt(((v - v.mean()) ** 2).mean()), abs=1e-6)
    assert_same_state(before, state_tensors(model))  # BN running stats untouched
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_pre_relu_without_relu_is_the_block_output_and_post_relu_is_refused():
    model = make_mlp()
    x, _ = data((4,))
    acts = record_activations(model, x, layers=[3])
    m = copy.deepcopy(model)
    expected = m.blocks[2](m.blocks[1](m.blocks[0](x)))
    torch.testing.assert_close(acts[3], expected.detach(), rtol=1e-6, atol=1e-7)
    with pytest.raises(ProbeError, match="post_relu"):
        record_activations(model, x, layers=[3], point="post_relu")


def test_recording_during_a_training_forward():
    model = make_conv()
    x, y = data((2, 4, 4))
    reference = record_activations(model, x, layers=[1, 2])
    with recording(model, [1, 2]) as acts:
        ce_loss(model, x, y).backward()  # the training step's own forward (in-place ReLU in block 1)
        ce_loss(model, x + 1.0, y)  # a later pass does not overwrite the first
    for k in (1, 2):
        assert not acts[k].requires_grad
        torch.testing.assert_close(acts[k], reference[k], rtol=1e-6, atol=1e-7)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_unit_histograms_and_summaries_on_hand_values():
    values = {(1, (0,)): np.array([-2.0, -0.5, 0.0, 0.5, 1.0, 3.0])}
    rows = unit_histograms(values, bins=[-1.0, 0.0, 1.0])
    assert [(r["bin_left"], r["bin_right"], r["count"]) for r in rows] == [
        (-math.inf, -1.0, 1), (-1.0, 0.0, 1), (0.0, 1.0, 3), (1.0, math.inf, 1)
    ]  # fmt: skip
    summary = unit_summaries(values)[0]
    assert summary["q50"] == 0.25 and summary["mean"] == pytest.approx(1.0 / 3.0)
    assert summary["q25"] == pytest.approx(-0.375)  # position 1.25 between -0.5 and 0.0
    with pytest.raises(ProbeError):
        unit_histograms(values, bins=[1.0, 0.0])
    hand = channel_stats({4: torch.tensor([[1.0, 3.0], [5.0, 7.0]])})  # (N=2, C=2)
    assert hand == [{"layer": 4, "channel": 0, "mean": 3.0, "var": 4.0}, {"layer": 4, "channel": 1, "mean": 5.0, "var": 4.0}]
    acts = {2: torch.arange(24.0).view(2, 3, 2, 2)}
    vals = unit_values(acts, {2: [(1, 0, 1)]})
    np.testing.assert_array_equal(vals[(2, (1, 0, 1))], [5.0, 17.0])
    with pytest.raises(ProbeError):
        unit_values(acts, {2: [(3, 0, 0)]})


def test_choose_units_distinct_in_range_and_seeded():
    a = choose_units((3, 4, 4), 10, torch.Generator().manual_seed(1))
    b = choose_units((3, 4, 4), 10, torch.Generator().manual_seed(1))
    assert a == b and len(set(a)) == 10
    assert all(0 <= c < 3 and 0 <= h < 4 and 0 <= w < 4 for c, h, w in a)
    assert sorted(choose_units((5,), 5, torch.Generator().manual_seed(2))) == [(i,) for i in range(5)]
