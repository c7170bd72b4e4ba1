"""Tests for bnflow.models.norms: lp normalisations, BatchNorm factory, noisy-BN noise (PROTOCOL §2, §3, §7), and
the variants beyond the paper (group_norm, layer_norm, weight_norm, batch_norm_no_affine, plug-ins; issue 17)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnflow.models.norms import (
    NORMS,
    ActivationNoise,
    LpNorm,
    NoiseSpec,
    group_count,
    make_norm,
    noise_modules,
    normalises_activations,
    set_noise_generator,
    weight_normalise_,
)

torch.set_num_threads(1)

P_BY_NAME = {"l1": 1, "l2": 2, "linf": math.inf}


def numpy_lp_norm(a, p, eps, gamma, beta):
    """Independent numpy reference: per channel over all axes but 1, scale on the uncentred values."""
    a = np.asarray(a, dtype=np.float64)
    axes = (0,) + tuple(range(2, a.ndim))
    shape = (1, a.shape[1]) + (1,) * (a.ndim - 2)
    mean = a.mean(axis=axes)
    if p == 1:
        denom = np.abs(a).mean(axis=axes) + eps
    elif p == 2:
        denom = np.sqrt((a**2).mean(axis=axes) + eps)
    else:
        denom = np.abs(a).max(axis=axes) + eps
    out = (a - mean.reshape(shape)) / denom.reshape(shape)
    return out * np.reshape(gamma, shape) + np.reshape(beta, shape)


# ---------------------------------------------------------------- LpNorm


def test_lp_norm_hand_values_scale_before_centring():
    # Channel 0 holds [1, 3]: mean 2; uncentred scales l1 = 2, l2 = sqrt(5), linf = 3.
    # Centring first would give [-1, 1] and scale 1 for every p, i.e. outputs of +-1: these values exclude that.
    # Channel 1 holds [-4, 0]: mean -2; l1 = 2, l2 = sqrt(8), linf = 4.
    a = torch.tensor([[1.0, -4.0], [3.0, 0.0]])
    expected = {
        "l1": [[-1 / 2, -2 / 2], [1 / 2, 2 / 2]],
        "l2": [[-1 / math.sqrt(5), -2 / math.sqrt(8)], [1 / math.sqrt(5), 2 / math.sqrt(8)]],
        "linf": [[-1 / 3, -2 / 4], [1 / 3, 2 / 4]],
    }
    for name, p in P_BY_NAME.items():
        out = LpNorm(p, 2, eps=0.0)(a)
        torch.testing.assert_close(out, torch.tensor(expected[name]), rtol=1e-6, atol=1e-7, msg=name)


def test_lp_norm_large_offset_is_not_standardised():
    # Activations 100 + {-1, +1}: the uncentred scale is ~100, so outputs are ~1/100, not +-1 as BN would give.
    a = torch.tensor([[99.0], [101.0]])
    for name, p in P_BY_NAME.items():
        out = LpNorm(p, 1, eps=0.0)(a)
        assert out.abs().max().item() < 0.011, name
        assert out.abs().max().item() > 0.009, name


@pytest.mark.parametrize("name", ["l1", "l2", "linf"])
@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5, 2)])
def test_lp_norm_matches_numpy_with_affine(name, shape):
    g = torch.Generator().manual_seed(3)
    a = torch.randn(shape, generator=g, dtype=torch.float64) * 2.0 + 0.7
    layer = LpNorm(P_BY_NAME[name], shape[1], eps=1e-3).double()
    gamma = torch.tensor([0.5, -1.5, 2.0], dtype=torch.float64)
    beta = torch.tensor([0.1, 0.0, -3.0], dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(gamma)
        layer.bias.copy_(beta)
    out = layer(a)
    ref = numpy_lp_norm(a.numpy(), P_BY_NAME[name], 1e-3, gamma.numpy(), beta.numpy())
    np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["l1", "l2", "linf"])
def test_lp_norm_running_estimates_and_eval(name):
    p = P_BY_NAME[name]
    g = torch.Generator().manual_seed(5)
    batches = [torch.randn(8, 2, 3, 3, generator=g, dtype=torch.float64) + 1.0 for _ in range(2)]
    layer = LpNorm(p, 2, eps=1e-5, momentum=0.1).double()
    assert torch.equal(layer.running_mean, torch.zeros(2, dtype=torch.float64))
    assert torch.equal(layer.running_scale, torch.ones(2, dtype=torch.float64))
    mean_ref, scale_ref = np.zeros(2), np.ones(2)
    for batch in batches:
        layer(batch)
        b = batch.numpy()
        axes = (0, 2, 3)
        batch_scale = {1: np.abs(b).mean(axes), 2: np.sqrt((b**2).mean(axes) + 1e-5)}.get(p, np.abs(b).max(axes))
        mean_ref = 0.9 * mean_ref + 0.1 * b.mean(axes)
        scale_ref = 0.9 * scale_ref + 0.1 * batch_scale
    np.testing.assert_allclose(layer.running_mean.numpy(), mean_ref, rtol=1e-12)
    np.testing.assert_allclose(layer.running_scale.numpy(), scale_ref, rtol=1e-12)

    layer.eval()
    x = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64)
    out = layer(x).detach().numpy()
    denom = scale_ref if p == 2 else scale_ref + 1e-5
    ref = (x.numpy() - mean_ref.reshape(1, 2, 1, 1)) / denom.reshape(1, 2, 1, 1)
    np.testing.assert_allclose(out, ref, rtol=1e-12)
    # Eval mode does not touch the running estimates.
    np.testing.assert_allclose(layer.running_mean.numpy(), mean_ref, rtol=0)


@pytest.mark.parametrize("name", ["l1", "l2", "linf"])
def test_lp_norm_backpropagates_through_batch_statistics(name):
    # Finite differences see the dependence of mean and scale on the input; a detached statistic would fail here.
    g = torch.Generator().manual_seed(7)
    a = torch.randn(5, 2, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    layer = LpNorm(P_BY_NAME[name], 2, eps=1e-5).double()
    assert torch.autograd.gradcheck(layer, (a,), eps=1e-6, atol=1e-6)


def test_lp_norm_rejects_bad_arguments():
    with pytest.raises(ValueError, match="p must be"):
        LpNorm(3, 4)
    with pytest.raises(ValueError, match="momentum"):
        LpNorm(1, 4, momentum=0.0)
    with pytest.raises(ValueError, match="num_features=4"):
        LpNorm(1, 4)(torch.zeros(2, 3))


# ---------------------------------------------------------------- make_norm


@pytest.mark.parametrize("spatial, shape", [(True, (4, 3, 5, 5)), (False, (6, 3))])
def test_make_norm_bn_equals_functional_batch_norm(spatial, shape):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(shape, generator=g) * 3.0 + 1.0
    layer = make_norm("bn", 3, spatial=spatial, eps=1e-5, momentum=0.1, noise=NoiseSpec())
    assert isinstance(layer, nn.BatchNorm2d if spatial else nn.BatchNorm1d)
    assert torch.equal(layer.weight.detach(), torch.ones(3)) and torch.equal(layer.bias.detach(), torch.zeros(3))
    running_mean, running_var = torch.zeros(3), torch.ones(3)
    ref = F.batch_norm(x, running_mean, running_var, torch.ones(3), torch.zeros(3), True, 0.1, 1e-5)
    torch.testing.assert_close(layer(x), ref)
    torch.testing.assert_close(layer.running_mean, running_mean)
    torch.testing.assert_close(layer.running_var, running_var)


def test_make_norm_builds_each_variant():
    spec = NoiseSpec()
    expected = {
        "standard": nn.Identity,
        "bn": nn.BatchNorm2d,
        "noisy_bn": nn.Sequential,
        "noisy_standard": ActivationNoise,
        "l1": LpNorm,
        "l2": LpNorm,
        "linf": LpNorm,
        "group_norm": nn.GroupNorm,
        "layer_norm": nn.GroupNorm,
        "weight_norm": nn.Identity,  # its reparametrisation lives in the layer (weight_normalise_)
        "batch_norm_no_affine": nn.BatchNorm2d,
    }
    assert set(expected) == set(NORMS)
    for kind, cls in expected.items():
        layer = make_norm(kind, 4, spatial=True, eps=1e-5, momentum=0.1, noise=spec)
        assert type(layer) is cls, kind
    noisy = make_norm("noisy_bn", 4, spatial=True, eps=1e-5, momentum=0.1, noise=spec)
    # Noise after BN's gamma and beta, before the ReLU that follows the norm (PROTOCOL §3).
    assert isinstance(noisy[0], nn.BatchNorm2d) and isinstance(noisy[1], ActivationNoise)
    assert [make_norm(k, 4, spatial=True).p for k in ("l1", "l2", "linf")] == [1.0, 2.0, math.inf]


def test_make_norm_unknown_kind_lists_valid_names():
    with pytest.raises(ValueError, match="valid names: standard, bn, noisy_bn"):
        make_norm("batchnorm", 4, spatial=True)


def test_noise_helpers_find_and_set_generators():
    model = nn.Sequential(
        make_norm("noisy_bn", 3, spatial=False), nn.ReLU(), make_norm("noisy_standard", 3, spatial=False)
    )
    assert len(noise_modules(model)) == 2
    g = torch.Generator().manual_seed(0)
    assert set_noise_generator(model, g) == 2
    assert all(m.generator is g for m in noise_modules(model))
    model(torch.randn(4, 3, generator=torch.Generator().manual_seed(1)))


# ---------------------------------------------------------------- NoiseSpec / ActivationNoise


def test_noise_spec_validates_each_field():
    assert NoiseSpec() == NoiseSpec(n_mu=0.5, n_sigma=1.25, r_mu=0.1, r_sigma=0.1)
    for field, bad in [("n_mu", -0.1), ("n_sigma", 0.9), ("r_mu", -1.0), ("r_sigma", float("nan"))]:
        with pytest.raises(ValueError, match=f"NoiseSpec.{field}"):
            NoiseSpec(**{field: bad})


def recover_noise(module, shape, generator):
    """Run `module` from one generator state on a = 0 and a = 1: out(0) = m, out(1) - out(0) = s."""
    state = generator.get_state()
    m = module(torch.zeros(shape))
    generator.set_state(state)
    s = module(torch.ones(shape)) - m
    return s, m


def test_noise_distribution_matches_algorithm_1():
    # Non-default parameters, so a swapped or ignored field shows up.
    spec = NoiseSpec(n_mu=2.0, n_sigma=3.0, r_mu=0.3, r_sigma=0.2)
    g = torch.Generator().manual_seed(123)
    module = ActivationNoise(spec, generator=g)
    channels, draws, shape = 4, 250, (50, 4, 4, 4)  # 800 positions per channel and draw
    mu_hat, sigma_hat, m_range, s_std = [], [], [], []
    for _ in range(draws):
        s, m = recover_noise(module, shape, g)
        m_c = m.transpose(0, 1).reshape(channels, -1)
        s_c = s.transpose(0, 1).reshape(channels, -1)
        # m_ij is uniform on [mu_j - r_mu, mu_j + r_mu]: the midrange estimates mu_j to ~1e-3.
        mu_hat.append((m_c.amax(1) + m_c.amin(1)) / 2)
        m_range.append(m_c.amax(1) - m_c.amin(1))
        sigma_hat.append(s_c.mean(1))
        s_std.append(s_c.std(1))
    mu_hat, sigma_hat = torch.stack(mu_hat).flatten(), torch.stack(sigma_hat).flatten()
    m_range, s_std = torch.stack(m_range).flatten(), torch.stack(s_std).flatten()
    n = mu_hat.numel()  # 1000 (draw, channel) pairs

    # mu_j ~ U(-2, 2): mean 0 (sd 2/sqrt(3n) ~ 0.037), range near the ends, nothing outside.
    assert abs(mu_hat.mean().item()) < 0.15
    assert mu_hat.abs().max().item() <= 2.0 + 0.01
    assert mu_hat.min().item() < -1.9 and mu_hat.max().item() > 1.9
    assert abs(mu_hat.var().item() - 4.0 / 3.0) < 0.2
    # sigma_j ~ U(1, 3): the per-channel mean of s estimates it to ~0.2/sqrt(800) ~ 0.007.
    assert sigma_hat.min().item() > 1.0 - 0.03 and sigma_hat.max().item() < 3.0 + 0.03
    assert sigma_hat.min().item() < 1.1 and sigma_hat.max().item() > 2.9
    assert abs(sigma_hat.mean().item() - 2.0) < 0.1
    # m_ij - mu_j within +-r_mu: range at most 2 r_mu = 0.6, and 800 uniform draws nearly fill it.
    assert m_range.max().item() <= 0.6 + 1e-5
    assert m_range.min().item() > 0.57
    # s_ij ~ N(sigma_j, r_sigma): the within-channel standard deviation is r_sigma = 0.2 (sd ~0.005).
    assert abs(s_std.mean().item() - 0.2) < 0.005
    assert s_std.min().item() > 0.17 and s_std.max().item() < 0.23
    n_mu_like = (mu_hat.abs() < 0.5).float().mean().item()  # uniform: P(|mu| < 0.5) = 1/4
    assert abs(n_mu_like - 0.25) < 0.06, n


def test_noise_is_affine_per_element_and_deterministic():
    g = torch.Generator().manual_seed(9)
    module = ActivationNoise(NoiseSpec(), generator=g)
    shape = (3, 5, 4, 4)
    state = g.get_state()
    s, m = recover_noise(module, shape, g)
    a = torch.randn(shape, generator=torch.Generator().manual_seed(1), requires_grad=True)
    g.set_state(state)
    out = module(a)
    torch.testing.assert_close(out, s * a + m)
    # d out / d a = s: the noise scales gradients too.
    out.sum().backward()
    torch.testing.assert_close(a.grad, s)
    g.set_state(state)
    assert torch.equal(module(a), out)
    # A new call draws new noise.
    assert not torch.equal(module(a), out)


def test_noise_varies_per_position_and_channel():
    g = torch.Generator().manual_seed(4)
    module = ActivationNoise(NoiseSpec(), generator=g)
    s, m = recover_noise(module, (2, 3, 4, 4), g)
    for noise in (s, m):
        per_channel = noise.transpose(0, 1).reshape(3, -1)
        assert (per_channel.std(1) > 0).all()  # differs across (sample, h, w) positions
        assert per_channel[:, 0].unique().numel() == 3  # differs across channels
    # (N, C) input: per-sample, per-channel noise.
    s2, m2 = recover_noise(module, (16, 3), g)
    assert s2.shape == (16, 3) and (m2.std(0) > 0).all() and (s2.std(0) > 0).all()


def test_noise_identity_in_eval_and_needs_generator():
    module = ActivationNoise(NoiseSpec())
    a = torch.randn(4, 3, generator=torch.Generator().manual_seed(2))
    with pytest.raises(RuntimeError, match="no generator"):
        module(a)
    module.eval()
    assert torch.equal(module(a), a)
    module.train()
    module.set_generator(torch.Generator().manual_seed(0))
    assert not torch.equal(module(a), a)
    with pytest.raises(TypeError):
        module.set_generator(0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_noise_draws_on_the_generator_device():
    g = torch.Generator(device="cuda").manual_seed(0)
    module = ActivationNoise(NoiseSpec(), generator=g)
    a = torch.randn(8, 4, 3, 3, device="cuda")
    state = g.get_state()
    out = module(a)
    g.set_state(state)
    assert out.device.type == "cuda" and torch.equal(module(a), out)
    with pytest.raises(RuntimeError, match="generator is on"):
        module(a.cpu())


# ---------------------------------------------------------------- beyond the paper (issue 17)


@pytest.mark.parametrize("channels, groups, spatial, expected", [
    (64, 32, True, 32),   # groups divides C: G = groups
    (16, 32, True, 16),   # fewer channels than groups: one channel per group
    (48, 32, True, 24),   # 32 does not divide 48: the largest divisor below it
    (7, 3, True, 1),      # a prime C: only 1 (or C itself, which is above the request)
    (10, 32, False, 5),   # (N, C): at most C // 2 groups, so each group holds two values per example
    (10, 4, False, 2),
    (1, 32, False, 1),
])
def test_group_count_rule(channels, groups, spatial, expected):
    g = group_count(channels, groups, spatial=spatial)
    assert g == expected and channels % g == 0


def numpy_group_norm(a, groups, eps, gamma, beta):
    """Independent reference: per example, over each group of C/G consecutive channels and every position."""
    a = np.asarray(a, dtype=np.float64)
    n, c = a.shape[:2]
    grouped = a.reshape(n, groups, -1)
    mean = grouped.mean(axis=2, keepdims=True)
    var = grouped.var(axis=2, keepdims=True)  # biased, as the definition says
    out = ((grouped - mean) / np.sqrt(var + eps)).reshape(a.shape)
    shape = (1, c) + (1,) * (a.ndim - 2)
    return out * np.reshape(gamma, shape) + np.reshape(beta, shape)


def test_group_norm_hand_values():
    # One example, 4 channels, 2 positions, 2 groups. Group 1 holds channels 0-1 = [0, 2, 4, 6]: mean 3, biased
    # variance (9 + 1 + 1 + 9) / 4 = 5. Group 2 holds [1, 1, 1, 5]: mean 2, variance (1 + 1 + 1 + 9) / 4 = 3.
    a = torch.tensor([[[[0.0, 2.0]], [[4.0, 6.0]], [[1.0, 1.0]], [[1.0, 5.0]]]])
    layer = make_norm("group_norm", 4, spatial=True, eps=0.0, groups=2)
    assert layer.num_groups == 2
    expected = torch.tensor([[[[-3.0, -1.0]], [[1.0, 3.0]]]]) / math.sqrt(5.0)
    expected = torch.cat([expected, torch.tensor([[[[-1.0, -1.0]], [[-1.0, 3.0]]]]) / math.sqrt(3.0)], dim=1)
    torch.testing.assert_close(layer(a), expected)
    layer.eval()  # no batch statistics: eval mode computes the same function
    torch.testing.assert_close(layer(a), expected)


@pytest.mark.parametrize("kind, shape, groups", [("group_norm", (3, 6, 4, 5), 3), ("group_norm", (5, 8), 32),
                                                 ("layer_norm", (3, 6, 4, 5), 32), ("layer_norm", (5, 8), 32)])
def test_group_and_layer_norm_match_numpy_with_affine(kind, shape, groups):
    g = torch.Generator().manual_seed(5)
    a = torch.randn(shape, generator=g, dtype=torch.float64) * 3.0 + 1.5
    layer = make_norm(kind, shape[1], spatial=len(shape) == 4, eps=1e-3, groups=groups).double()
    gamma = torch.linspace(-1.0, 2.0, shape[1], dtype=torch.float64)
    beta = torch.linspace(0.5, -0.5, shape[1], dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(gamma)
        layer.bias.copy_(beta)
    n_groups = 1 if kind == "layer_norm" else group_count(shape[1], groups, spatial=len(shape) == 4)
    ref = numpy_group_norm(a.numpy(), n_groups, 1e-3, gamma.numpy(), beta.numpy())
    np.testing.assert_allclose(layer(a).detach().numpy(), ref, rtol=1e-10, atol=1e-12)
    # the same examples in another batch give the same outputs: per-example statistics only
    np.testing.assert_allclose(layer(a[:1]).detach().numpy(), ref[:1], rtol=1e-10, atol=1e-12)


def test_layer_norm_is_torch_layer_norm_over_channels_and_positions_with_a_per_channel_affine():
    # torch's F.layer_norm over (C, H, W) with no affine, then gamma_c, beta_c: where the two definitions coincide.
    g = torch.Generator().manual_seed(6)
    a = torch.randn(4, 3, 5, 5, generator=g)
    layer = make_norm("layer_norm", 3, spatial=True, eps=1e-5)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([2.0, -1.0, 0.5]))
        layer.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
    ref = F.layer_norm(a, (3, 5, 5), eps=1e-5) * layer.weight.view(1, 3, 1, 1) + layer.bias.view(1, 3, 1, 1)
    torch.testing.assert_close(layer(a), ref)
    assert [p.shape for p in layer.parameters()] == [(3,), (3,)]  # one gamma, beta per channel, not per (c, h, w)


def test_weight_norm_reparametrises_per_output_channel():
    g = torch.Generator().manual_seed(7)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    nn.init.xavier_uniform_(conv.weight, generator=g)
    w_init = conv.weight.detach().clone()
    weight_normalise_([conv])
    torch.testing.assert_close(conv.weight, w_init, rtol=1e-6, atol=1e-7)  # step 0 = the Glorot draw
    gain, direction = conv.parametrizations.weight.original0, conv.parametrizations.weight.original1
    assert gain.shape == (3, 1, 1, 1) and direction.shape == (3, 2, 3, 3)
    assert {id(p) for p in conv.parameters()} == {id(conv.bias), id(gain), id(direction)}
    with torch.no_grad():  # hand values: w_o = g_o * v_o / ||v_o||
        direction.copy_(torch.arange(54, dtype=torch.float32).view(3, 2, 3, 3) - 20.0)
        gain.copy_(torch.tensor([2.0, -0.5, 3.0]).view(3, 1, 1, 1))
    v = direction.detach().numpy().reshape(3, -1)
    expected = np.array([2.0, -0.5, 3.0])[:, None] * v / np.linalg.norm(v, axis=1, keepdims=True)
    np.testing.assert_allclose(conv.weight.detach().numpy().reshape(3, -1), expected, rtol=1e-6)
    conv(torch.randn(2, 2, 4, 4, generator=g)).square().sum().backward()
    assert gain.grad.abs().sum() > 0 and direction.grad.abs().sum() > 0
    # the gradient w.r.t. v is orthogonal to v per output channel (scaling v does not change w)
    dots = (direction.grad * direction.detach()).sum(dim=(1, 2, 3))
    assert dots.abs().max() < 1e-4 * direction.grad.abs().sum()
    assert isinstance(make_norm("weight_norm", 3, spatial=True), nn.Identity)


def test_batch_norm_no_affine_hand_formula_train_and_eval():
    a = torch.tensor([[1.0, -2.0], [3.0, 0.0], [5.0, 2.0]])  # channel 0: mean 3, var 8/3; channel 1: mean 0, var 8/3
    layer = make_norm("batch_norm_no_affine", 2, spatial=False, eps=1e-5, momentum=0.5)
    assert list(layer.parameters()) == [] and layer.weight is None and layer.bias is None
    centred = a - torch.tensor([3.0, 0.0])
    torch.testing.assert_close(layer(a), centred / math.sqrt(8.0 / 3.0 + 1e-5))
    # running estimates (unbiased variance, as BatchNorm): 0.5 * 0 + 0.5 * 3 and 0.5 * 1 + 0.5 * 4
    torch.testing.assert_close(layer.running_mean, torch.tensor([1.5, 0.0]))
    torch.testing.assert_close(layer.running_var, torch.tensor([2.5, 2.5]))
    layer.eval()
    torch.testing.assert_close(layer(a), (a - torch.tensor([1.5, 0.0])) / math.sqrt(2.5 + 1e-5))


class Halve(nn.Module):
    def __init__(self, num_features):
        super().__init__()
        self.num_features = num_features

    def forward(self, a):
        return a / 2


def test_make_norm_builds_a_plugin_with_the_channel_count():
    layer = make_norm("halve", 6, spatial=True, plugin=Halve)
    assert isinstance(layer, Halve) and layer.num_features == 6
    with pytest.raises(ValueError, match="name of a built-in variant"):
        make_norm("bn", 6, spatial=True, plugin=Halve)
    with pytest.raises(ValueError, match="not a torch.nn.Module"):
        make_norm("halve", 6, spatial=True, plugin=lambda c: (lambda a: a))
    with pytest.raises(ValueError, match="unknown norm 'halve'"):
        make_norm("halve", 6, spatial=True)


def test_which_variants_normalise_activations():
    assert [k for k in NORMS if not normalises_activations(k)] == ["standard", "noisy_standard", "weight_norm"]
    assert normalises_activations("some_plugin")
