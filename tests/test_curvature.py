"""Curvature probes and Theorem 4.1/4.2 checks (bnflow/curvature) against explicit Hessians on tiny CPU models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from bnflow.curvature import (
    batch_sharpness,
    bn_layers,
    curvature_probe,
    flatten,
    gradient_in_top_subspace,
    hvp,
    theorem41_check,
    theorem41_sides,
    theorem42_check,
    top_eigenvalues,
    unflatten,
)
from bnflow.models import build_dln, build_vgg, dln_loss, set_noise_generator
from bnflow.probes import ProbeError


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: intra-op threads only add contention on the shared CPUs (13 s vs 1 s for this file)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def _seeded(model: nn.Module, seed: int, dtype: torch.dtype, scale: float = 0.6) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    model = model.to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=dtype) * scale + (1.0 if p.dim() == 1 else 0.0))
    return model


def _data(shape: tuple[int, ...], classes: int, seed: int, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=dtype), torch.randint(0, classes, (shape[0],), generator=gen)


def tanh_mlp(dtype=torch.float64) -> nn.Module:
    return _seeded(nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3)), 0, dtype)


def bn_convnet(dtype=torch.float32, eps: float = 1e-5) -> nn.Module:
    """conv -> BN2d -> ReLU -> maxpool -> conv -> BN2d -> ReLU -> linear (244 parameters)."""
    return _seeded(nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3, eps=eps), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, eps=eps), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3)), 1, dtype)


def explicit_hessian(model: nn.Module, loss_fn, x, y) -> tuple[torch.Tensor, torch.Tensor]:
    """(gradient, full Hessian) of loss_fn w.r.t. all parameters (flat), by torch.autograd.functional.hessian."""
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach() for _, p in model.named_parameters()]
    buffers = {n: b.clone() for n, b in model.named_buffers()}  # train-mode BN writes running stats

    def f(flat: torch.Tensor) -> torch.Tensor:
        state = dict(zip(names, unflatten(flat, params))) | {n: b.clone() for n, b in buffers.items()}
        return loss_fn(lambda inp: functional_call(model, state, (inp,)), x, y)

    flat = flatten(params).clone().requires_grad_(True)
    grad = torch.autograd.grad(f(flat), flat)[0]
    return grad, torch.autograd.functional.hessian(f, flat.detach(), vectorize=True)


def ce_fn(forward, x, y):
    return F.cross_entropy(forward(x), y)


# ---------------------------------------------------------------- Hessian-vector products


@pytest.fixture(scope="module")
def convnet_case():
    """A float64 BN/ReLU/max-pool convnet of 234 parameters, a batch, and its explicit gradient and Hessian."""
    model = bn_convnet(torch.float64)
    x, y = _data((6, 2, 4, 4), 3, 1, torch.float64)
    g, h = explicit_hessian(model, ce_fn, x, y)
    assert h.shape == (234, 234)
    return model, x, y, g, h


def test_hvp_matches_explicit_hessian_on_a_bn_relu_convnet(convnet_case):
    model, x, y, _, h = convnet_case
    params = list(model.parameters())
    v = [torch.randn(p.shape, generator=torch.Generator().manual_seed(i), dtype=p.dtype) for i, p in enumerate(params)]
    got = flatten(hvp(model, ce, x, y, None, v))
    torch.testing.assert_close(got, h @ flatten(v), rtol=1e-9, atol=1e-11)


def test_hvp_matches_central_differences_of_the_gradient_on_a_smooth_net():
    model = tanh_mlp()
    x, y = _data((10, 5), 3, 2, torch.float64)
    params = list(model.parameters())
    v = [torch.randn(p.shape, generator=torch.Generator().manual_seed(7 + i), dtype=p.dtype)
         for i, p in enumerate(params)]

    def grad_at(shift: float) -> torch.Tensor:
        with torch.no_grad():
            for p, d in zip(params, v):
                p.add_(d, alpha=shift)
        g = flatten(torch.autograd.grad(ce(model, x, y), params))
        with torch.no_grad():
            for p, d in zip(params, v):
                p.sub_(d, alpha=shift)
        return g

    h = 1e-5
    fd = (grad_at(h) - grad_at(-h)) / (2 * h)
    got = flatten(hvp(model, ce, x, y, params, v))
    torch.testing.assert_close(got, fd, rtol=1e-6, atol=1e-8)


def test_hvp_restricted_to_some_parameters_is_that_block_of_the_hessian():
    model = tanh_mlp()
    x, y = _data((10, 5), 3, 2, torch.float64)
    _, h = explicit_hessian(model, ce_fn, x, y)
    params = list(model.parameters())
    sub = [params[2], params[3]]  # the second linear layer
    start = params[0].numel() + params[1].numel()
    idx = slice(start, start + sub[0].numel() + sub[1].numel())
    v = [torch.ones_like(p) for p in sub]
    torch.testing.assert_close(flatten(hvp(model, ce, x, y, sub, v)), h[idx, idx] @ flatten(v), rtol=1e-9,
                               atol=1e-12)
    with pytest.raises(ProbeError, match="shaped like params"):
        hvp(model, ce, x, y, sub, v[:1])


# ---------------------------------------------------------------- spectrum and sharpness


def test_lambda_max_and_top_k_match_eigvalsh_of_the_full_hessian(convnet_case):
    model, x, y, _, h = convnet_case
    evals = torch.linalg.eigvalsh(h).flip(0).numpy()  # descending

    power = top_eigenvalues(model, ce, x, y, iters=400, tol=1e-10, generator=torch.Generator().manual_seed(0))
    assert power.method == "power" and power.converged and power.eigenvectors.shape == (1, 234)
    assert power.eigenvalues[0] == pytest.approx(evals[0], rel=1e-6)

    lanczos = top_eigenvalues(model, ce, x, y, k=3, iters=120, tol=1e-8, generator=torch.Generator().manual_seed(1))
    assert lanczos.method == "lanczos" and lanczos.converged
    np.testing.assert_allclose(lanczos.eigenvalues, evals[:3], rtol=1e-6)
    vecs = lanczos.eigenvectors
    torch.testing.assert_close(vecs @ vecs.T, torch.eye(3, dtype=vecs.dtype), atol=1e-8, rtol=0)
    for lam, vec in zip(lanczos.eigenvalues, vecs):  # they are eigenvectors: ‖Hv − λv‖ small
        assert float(torch.linalg.vector_norm(h @ vec - lam * vec)) < 1e-4 * abs(lam)


class Quadratic(nn.Module):
    """L(w) = ½ wᵀAw with a fixed symmetric A: a Hessian whose spectrum is known exactly."""

    def __init__(self, eigenvalues: list[float], seed: int) -> None:
        super().__init__()
        n = len(eigenvalues)
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
        self.register_buffer("a", q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T)
        self.w = nn.Parameter(torch.randn(n, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64))


def quad_loss(model: Quadratic, x, y) -> torch.Tensor:
    return 0.5 * model.w @ model.a @ model.w


def test_a_negative_dominant_eigenvalue_is_shifted_away_to_return_lambda_max():
    # |−5| > 3: plain power iteration would report −5; λ_max is 3.
    model = Quadratic([-5.0, 3.0, 2.0, 1.0, 0.5, -1.0], seed=3)
    res = top_eigenvalues(model, quad_loss, None, None, iters=300, tol=1e-12,
                          generator=torch.Generator().manual_seed(0))
    assert res.shift == pytest.approx(-5.0, rel=1e-6)
    assert res.eigenvalues[0] == pytest.approx(3.0, rel=1e-8) and res.converged
    top = top_eigenvalues(model, quad_loss, None, None, k=3, iters=6, tol=1e-10,
                          generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(top.eigenvalues, [3.0, 2.0, 1.0], rtol=1e-10)
    with pytest.raises(ProbeError, match="lanczos"):
        top_eigenvalues(model, quad_loss, None, None, k=2, method="power", generator=torch.Generator())


def test_batch_sharpness_is_the_rayleigh_quotient_of_the_gradient(convnet_case):
    model, x, y, g, h = convnet_case
    expected = float(g @ h @ g / (g @ g))
    assert batch_sharpness(model, ce, x, y) == pytest.approx(expected, rel=1e-9)
    d = torch.randn(g.shape, generator=torch.Generator().manual_seed(4), dtype=g.dtype)
    given = batch_sharpness(model, ce, x, y, grad=unflatten(d, list(model.parameters())))
    assert given == pytest.approx(float(d @ h @ d / (d @ d)), rel=1e-9)

    res = curvature_probe(model, ce, x, y, k=2, iters=100, tol=1e-9, generator=torch.Generator().manual_seed(2))
    evals, evecs = torch.linalg.eigh(h)
    assert res.batch_sharpness == pytest.approx(expected, rel=1e-9)
    assert res.eig.eigenvalues[0] == pytest.approx(float(evals[-1]), rel=1e-6)
    top2 = evecs[:, -2:]
    assert res.grad_top_fraction == pytest.approx(float((top2.T @ g).square().sum() / (g @ g)), rel=1e-5)
    row = res.to_row(10, lr=0.1)
    assert row["lr_lambda_max"] == pytest.approx(0.1 * row["lambda_max"]) and "lambda_2" in row


def test_gradient_in_top_subspace_on_hand_made_vectors():
    g = torch.tensor([3.0, 4.0, 0.0, 0.0])
    e = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    assert gradient_in_top_subspace(g, e) == pytest.approx(9 / 25)
    # A non-orthonormal basis of the same plane gives the same answer; the whole space gives everything.
    assert gradient_in_top_subspace(g, torch.tensor([[1.0, 0, 0, 0], [1.0, 1.0, 0, 0]])) == pytest.approx(1.0)
    assert gradient_in_top_subspace([g[:2], g[2:]], torch.eye(4)[2:]) == pytest.approx(0.0)
    assert math.isnan(gradient_in_top_subspace(torch.zeros(4), e))
    with pytest.raises(ProbeError, match=r"\(k, 4\)"):
        gradient_in_top_subspace(g, torch.ones(1, 3))


# ---------------------------------------------------------------- Theorem 4.1


def _captured(model: nn.Module, x, y, bn_modules):
    """Independent capture: BN inputs/outputs by hooks, gradients by autograd (no bnflow code)."""
    store = []
    handles = [m.register_forward_hook(lambda mod, inp, out: store.append((inp[0], out))) for m in bn_modules]
    loss = ce(model, x, y)
    for h in handles:
        h.remove()
    grads = torch.autograd.grad(loss, [t for pair in store for t in pair])
    return [(a.detach().double(), grads[2 * i].double(), grads[2 * i + 1].double()) for i, (a, _) in enumerate(store)]


def _formula(y, g_y, g_z, gamma, eps, last_coef):
    """Per channel (‖g_y‖², (γ²/σ²)(‖g_z‖² − ⟨1,g_z⟩²/m − c⟨g_z,ŷ⟩²)) with c = last_coef(m)."""
    dims = [0] + list(range(2, y.dim()))
    m = y.numel() // y.shape[1]
    mu = y.mean(dim=dims, keepdim=True)
    sigma = torch.sqrt((y - mu).square().mean(dim=dims, keepdim=True) + eps)
    y_hat = (y - mu) / sigma
    lhs = g_y.square().sum(dim=dims)
    rhs = (gamma.double() ** 2 / sigma.reshape(-1) ** 2) * (
        g_z.square().sum(dim=dims) - g_z.sum(dim=dims).square() / m - last_coef(m) * (g_z * y_hat).sum(dim=dims) ** 2)
    return lhs, rhs


def test_theorem41_holds_to_float_precision_on_batchnorm2d_and_a_broken_formula_fails():
    model = bn_convnet(torch.float32)
    x, y = _data((8, 2, 4, 4), 3, 5)
    rows = theorem41_check(model, ce, x, y)
    assert [(r["layer"], r["channel"]) for r in rows] == [(1, c) for c in range(3)] + [(2, c) for c in range(4)]
    assert [r["m"] for r in rows] == [8 * 16] * 3 + [8 * 4] * 4
    assert max(r["rel_gap"] for r in rows) < 1e-5 and max(r["rel_gap_exact"] for r in rows) < 1e-5

    bns = [model[1], model[5]]
    captured = _captured(model, x, y, bns)
    by_layer = {1: rows[:3], 2: rows[3:]}
    for k, ((a, g_y, g_z), bn) in enumerate(zip(captured, bns), start=1):
        lhs, rhs = _formula(a, g_y, g_z, bn.weight.detach(), bn.eps, lambda m: 1 / m)
        np.testing.assert_allclose([r["lhs"] for r in by_layer[k]], lhs.numpy(), rtol=1e-12)
        np.testing.assert_allclose([r["rhs"] for r in by_layer[k]], rhs.numpy(), rtol=1e-9)
        np.testing.assert_allclose([r["reduction"] for r in by_layer[k]],
                                   (lhs / g_z.square().sum(dim=(0, 2, 3))).numpy(), rtol=1e-12)
        # The paper's printed 1/√m, or a dropped term, is far off: the check can tell a broken formula.
        _, rhs_sqrt = _formula(a, g_y, g_z, bn.weight.detach(), bn.eps, lambda m: 1 / math.sqrt(m))
        _, rhs_drop = _formula(a, g_y, g_z, bn.weight.detach(), bn.eps, lambda m: 0.0)
        assert (torch.abs(rhs_sqrt - lhs) / lhs).max() > 1e-2 and (torch.abs(rhs_drop - lhs) / lhs).max() > 1e-2


def test_theorem41_eps_term_paper_formula_vs_exact_identity():
    # With a large ε the paper's form (ŷ of norm √m assumed) is visibly off; the ε-exact identity is not.
    model = bn_convnet(torch.float32, eps=0.5)
    x, y = _data((8, 2, 4, 4), 3, 5)
    rows = theorem41_check(model, ce, x, y, layers=[2])
    assert {r["layer"] for r in rows} == {2}
    assert max(r["rel_gap_exact"] for r in rows) < 1e-5
    assert max(r["rel_gap"] for r in rows) > 1e-3
    # paper − exact = (γ²/σ²)(ε/σ²)⟨g_z,ŷ⟩²/m ≤ (ε/σ²)·(γ²/σ²)‖g_z‖² (Cauchy-Schwarz, ‖ŷ‖² ≤ m)
    assert all(r["rel_gap"] <= r["rel_gap_exact"] + r["eps_ratio"] for r in rows)
    assert all(r["rhs"] >= r["lhs"] for r in rows)  # the ε-dropped term only ever overstates the right side


def test_theorem41_on_batchnorm1d_of_the_bnflow_dln_and_pure_sides():
    model = build_dln(depth=4, dim=6, norm="bn", generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    x, target = torch.randn(16, 6, generator=gen), torch.randn(16, 6, generator=gen)
    rows = theorem41_check(model, lambda m, a, b: dln_loss(m(a), b), x, target)
    assert sorted({r["layer"] for r in rows}) == [1, 2, 3]  # the last layer has no norm
    assert all(r["m"] == 16 for r in rows) and max(r["rel_gap_exact"] for r in rows) < 1e-5
    assert all(r["rel_gap"] <= r["rel_gap_exact"] + r["eps_ratio"] for r in rows)

    # Pure function on hand-made tensors: g_y built from the closed form (γ/σ)·P·g_z with ε = 0 and N = 4.
    yv = torch.tensor([[1.0], [2.0], [4.0], [7.0]], dtype=torch.float64)
    gz = torch.tensor([[0.5], [-1.0], [2.0], [0.25]], dtype=torch.float64)
    sigma = yv.std(unbiased=False)
    y_hat = (yv - yv.mean()) / sigma
    gy = 1.5 / sigma * (gz - gz.mean() - y_hat * (gz * y_hat).mean())
    sides = theorem41_sides(yv, gy, gz, torch.tensor([1.5]), eps=0.0)
    expected = 1.5**2 / sigma**2 * (gz.square().sum() - gz.sum() ** 2 / 4 - (gz * y_hat).sum() ** 2 / 4)
    assert sides["lhs"][0] == pytest.approx(float(gy.square().sum()), rel=1e-14)
    assert sides["rhs"][0] == pytest.approx(float(expected), rel=1e-12) == pytest.approx(sides["lhs"][0], rel=1e-12)


def test_theorem_checks_need_train_mode_and_skip_models_without_bn():
    model = bn_convnet()
    x, y = _data((4, 2, 4, 4), 3, 0)
    model.eval()
    with pytest.raises(ProbeError, match="eval mode"):
        theorem41_check(model, ce, x, y)
    model.train()
    with pytest.raises(ProbeError, match=r"layers \[3\]"):
        theorem42_check(model, ce, x, y, layers=[3])
    plain = build_vgg("vgg11", "standard", width_mult=0.125, generator=torch.Generator().manual_seed(0))
    assert bn_layers(plain) == [] and theorem41_check(plain, ce, torch.randn(2, 3, 32, 32), torch.tensor([0, 1])) == []


# ---------------------------------------------------------------- Theorem 4.2


class BnMlp(nn.Module):
    def __init__(self, eps: float) -> None:
        super().__init__()
        self.lin1, self.bn, self.lin2 = nn.Linear(3, 2), nn.BatchNorm1d(2, eps=eps), nn.Linear(2, 3)

    def forward(self, x):
        return self.lin2(torch.tanh(self.bn(self.lin1(x))))


@pytest.mark.parametrize("eps", [1e-12, 0.3])
def test_theorem42_sides_match_explicit_hessians_wrt_bn_input_and_output(eps):
    model = _seeded(BnMlp(eps), 2, torch.float64)
    x, t = _data((6, 3), 3, 3, torch.float64)
    rows = theorem42_check(model, ce, x, t)
    assert [(r["layer"], r["channel"]) for r in rows] == [(1, 0), (1, 1), (1, -1)]

    # Explicit: the loss as a function of the BN input y (12 numbers) and of the BN output z.
    bn = model.bn
    y0 = model.lin1(x).detach()

    def of_y(yv):
        return F.cross_entropy(model.lin2(torch.tanh(F.batch_norm(yv, None, None, bn.weight, bn.bias, True, 0.0, eps))),
                               t)

    def of_z(zv):
        return F.cross_entropy(model.lin2(torch.tanh(zv)), t)

    z0 = F.batch_norm(y0, None, None, bn.weight, bn.bias, True, 0.0, eps).detach()
    h_y = torch.autograd.functional.hessian(of_y, y0).reshape(12, 12)
    h_z = torch.autograd.functional.hessian(of_z, z0).reshape(12, 12)
    g_y = torch.autograd.functional.jacobian(of_y, y0)
    g_z = torch.autograd.functional.jacobian(of_z, z0)
    sigma = torch.sqrt(y0.var(dim=0, unbiased=False) + eps)
    y_hat = (y0 - y0.mean(dim=0)) / sigma
    gamma = bn.weight.detach()
    for r in rows:
        mask = torch.zeros(2, dtype=torch.float64)
        mask[r["channel"] if r["channel"] >= 0 else slice(None)] = 1.0
        v, gz = (g_y * mask).reshape(-1), (g_z * mask).reshape(-1)
        scale = (gamma / sigma).repeat(6)  # per-entry γ/σ of the entry's channel, (N, C) flattened
        assert r["lhs"] == pytest.approx(float(v @ h_y @ v), rel=1e-9)
        assert r["quad_z"] == pytest.approx(float((scale * v) @ h_z @ (scale * v)), rel=1e-9)
        assert r["quad_z_grad"] == pytest.approx(float((scale * gz) @ h_z @ (scale * gz)), rel=1e-9)
        curv = (gamma / (6 * sigma**2) * (g_z * y_hat).sum(0) * (g_y * mask).square().sum(0)).sum()
        assert r["curv_term"] == pytest.approx(float(curv), rel=1e-9)
        assert r["rhs_exact"] == pytest.approx(r["lhs"], rel=1e-9, abs=1e-12)
        if eps < 1e-9:  # Theorem 4.2 (a) holds with equality when ε = 0
            assert r["rhs"] == pytest.approx(r["lhs"], rel=1e-9, abs=1e-12) and r["rel_gap"] < 1e-9
    if eps > 0.1:
        assert max(r["rel_gap"] for r in rows) > 1e-4  # the paper's form drops O(ε/σ²) terms


def test_theorem42_on_a_conv_bn_relu_net_in_fp32():
    model = bn_convnet(torch.float32)
    x, y = _data((8, 2, 4, 4), 3, 5)
    rows = theorem42_check(model, ce, x, y, channels={2: [0, 3]})
    assert [(r["layer"], r["channel"]) for r in rows] == [(2, 0), (2, 3), (2, -1)]
    assert max(r["rel_gap_exact"] for r in rows) < 1e-4
    assert all(np.isfinite([r["lhs"], r["rhs"], r["margin_assumed"]]).all() for r in rows)
    with pytest.raises(ProbeError, match="out of range"):
        theorem42_check(model, ce, x, y, channels={2: [4]})


# ---------------------------------------------------------------- the probes leave the model untouched


def _state(model: nn.Module, gens):
    return ([p.detach().clone() for p in model.parameters()], [b.clone() for b in model.buffers()],
            [None if p.grad is None else p.grad.clone() for p in model.parameters()],
            [g.get_state().clone() for g in gens], [m.training for m in model.modules()])


def _same(a, b) -> bool:
    def eq(u, v):
        if isinstance(u, list):
            return len(u) == len(v) and all(eq(s, t) for s, t in zip(u, v))
        if u is None or v is None or isinstance(u, bool):
            return u is v or u == v
        return torch.equal(u, v)
    return all(eq(u, v) for u, v in zip(a, b))


def test_every_probe_leaves_model_buffers_grads_and_generators_bit_identical():
    model = build_dln(depth=4, dim=5, norm="noisy_bn", generator=torch.Generator().manual_seed(0))
    noise = torch.Generator().manual_seed(9)
    set_noise_generator(model, noise)
    gen = torch.Generator().manual_seed(6)
    x, target = torch.randn(8, 5, generator=gen), torch.randn(8, 5, generator=gen)

    def loss_fn(m, a, b):
        return dln_loss(m(a), b)

    loss_fn(model, x, target).backward()  # .grad tensors present, as after a training step
    noise_state = noise.get_state()

    def reset():
        noise.set_state(noise_state)

    gens = [noise, torch.default_generator]
    before = _state(model, gens)
    kw = {"before_forward": reset, "generators": [noise]}
    hvp(model, loss_fn, x, target, None, [torch.ones_like(p) for p in model.parameters()], **kw)
    top_eigenvalues(model, loss_fn, x, target, iters=3, generator=torch.Generator().manual_seed(0), **kw)
    top_eigenvalues(model, loss_fn, x, target, k=2, iters=3, generator=torch.Generator().manual_seed(0), **kw)
    batch_sharpness(model, loss_fn, x, target, **kw)
    curvature_probe(model, loss_fn, x, target, iters=2, generator=torch.Generator().manual_seed(0), **kw)
    rows41 = theorem41_check(model, loss_fn, x, target, **kw)
    rows42 = theorem42_check(model, loss_fn, x, target, channels={1: [0], 3: [1]}, **kw)
    assert _same(before, _state(model, gens))
    assert sorted({r["layer"] for r in rows41}) == [1, 2, 3]  # the BN inside each noisy-BN block
    assert max(r["rel_gap_exact"] for r in rows41) < 1e-5 and len(rows42) == 4
    # The noise reset makes two calls see the same function: identical results.
    again = theorem41_check(model, loss_fn, x, target, **kw)
    assert [r["lhs"] for r in again] == [r["lhs"] for r in rows41]
    # ... and without it the noise differs, so the BN output gradients do too (the reset is what is tested).
    noise.set_state(noise_state)
    torch.randn(100, generator=noise)
    assert [r["lhs"] for r in theorem41_check(model, loss_fn, x, target)] != [r["lhs"] for r in rows41]
