"""Tests for bnflow.models.vgg and bnflow.models.dln (PROTOCOL §2, §6)."""

import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnflow.models import (
    NORMS,
    VGG_CONFIGS,
    ActivationNoise,
    LpNorm,
    build_dln,
    build_vgg,
    dln_loss,
    make_dln_data,
    set_noise_generator,
)

torch.set_num_threads(1)


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- VGG


@pytest.fixture(scope="module")
def vgg16_full():
    return build_vgg("vgg16", "bn", generator=gen(0))


def test_vgg_structure(vgg16_full):
    model = vgg16_full
    assert len(model.convs) == 13 and len(model.blocks) == 13 and len(model.norms) == 13
    assert [c.out_channels for c in model.convs] == [c for c in VGG_CONFIGS["vgg16"] if c != "M"]
    for block, conv, norm in zip(model.blocks, model.convs, model.norms):
        assert block[0] is conv and block[1] is norm
        assert isinstance(block[2], nn.ReLU) and not block[2].inplace
        assert conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.bias is not None
        assert isinstance(norm, nn.BatchNorm2d) and norm.num_features == conv.out_channels
    # A max-pool closes the blocks of layers #2, #4, #7, #10, #13.
    pooled = [k + 1 for k, block in enumerate(model.blocks) if len(block) == 4]
    assert pooled == [2, 4, 7, 10, 13]
    assert all(isinstance(model.blocks[k - 1][3], nn.MaxPool2d) for k in pooled)
    assert model.classifier.in_features == 512 and model.classifier.out_features == 10
    w, b = model.layer_params(5)
    assert w is model.convs[4].weight and b is model.convs[4].bias
    with pytest.raises(ValueError, match="1..13"):
        model.layer_params(14)

    vgg11 = build_vgg("vgg11", "standard", width_mult=0.125, generator=gen(0))
    assert len(vgg11.convs) == 8
    assert all(isinstance(n, nn.Identity) for n in vgg11.norms)


def test_vgg_glorot_init(vgg16_full):
    # Glorot uniform: U(-b, b), b = sqrt(6 / (fan_in + fan_out)), variance 2 / (fan_in + fan_out); biases zero.
    layers = [*vgg16_full.convs, vgg16_full.classifier]
    for layer in layers:
        w = layer.weight.detach().double()
        receptive = w[0, 0].numel()
        fan_in, fan_out = w.shape[1] * receptive, w.shape[0] * receptive
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        n = w.numel()
        assert w.abs().max().item() <= bound
        assert w.abs().max().item() > bound * (1 - 20.0 / n)
        # Sample variance of a uniform has relative sd sqrt(0.8 / n).
        assert w.var().item() == pytest.approx(2.0 / (fan_in + fan_out), rel=5 * math.sqrt(0.8 / n))
        assert abs(w.mean().item()) < 5 * bound / math.sqrt(3 * n)
        assert torch.equal(layer.bias.detach(), torch.zeros_like(layer.bias))
    bn = vgg16_full.norms[0]
    assert torch.equal(bn.weight.detach(), torch.ones(64)) and torch.equal(bn.bias.detach(), torch.zeros(64))


def test_vgg_init_is_a_function_of_the_generator():
    a = build_vgg("vgg11", "bn", width_mult=0.25, generator=gen(1))
    b = build_vgg("vgg11", "bn", width_mult=0.25, generator=gen(1))
    c = build_vgg("vgg11", "bn", width_mult=0.25, generator=gen(2))
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name
    assert not torch.equal(a.convs[0].weight, c.convs[0].weight)
    with pytest.raises(ValueError, match="torch.Generator"):
        build_vgg("vgg11", "bn")


def test_vgg_width_mult():
    model = build_vgg("vgg11", "l2", width_mult=0.25, generator=gen(0))
    assert [c.out_channels for c in model.convs] == [16, 32, 64, 64, 128, 128, 128, 128]
    assert model.convs[1].in_channels == 16 and model.classifier.in_features == 128
    assert all(n.num_features == c.out_channels for n, c in zip(model.norms, model.convs))
    tiny = build_vgg("vgg11", "standard", width_mult=0.001, generator=gen(0))
    assert [c.out_channels for c in tiny.convs] == [1] * 8
    with pytest.raises(ValueError, match="width_mult"):
        build_vgg("vgg11", width_mult=0.0, generator=gen(0))
    with pytest.raises(ValueError, match="valid names: vgg16, vgg11"):
        build_vgg("vgg19", generator=gen(0))


@pytest.mark.parametrize("norm", NORMS)
def test_vgg_every_norm_trains_forward_and_backward(norm):
    model = build_vgg("vgg11", norm, width_mult=0.125, num_classes=7, generator=gen(0))
    assert set_noise_generator(model, gen(5)) == (8 if norm.startswith("noisy") else 0)
    x = torch.randn(4, 3, 32, 32, generator=gen(1))
    logits = model(x)
    assert logits.shape == (4, 7) and torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    for k in range(1, 9):
        for p in model.layer_params(k):
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    expected = {"bn": nn.BatchNorm2d, "l1": LpNorm, "linf": LpNorm, "noisy_standard": ActivationNoise}
    if norm in expected:
        assert all(isinstance(n, expected[norm]) for n in model.norms)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # eval: no noise, running statistics


def test_tiny_vgg_memorises_a_batch():
    # 60 SGD steps on one fixed batch of 32 must lower the loss for both the plain and the BN network.
    x = torch.randn(32, 3, 32, 32, generator=gen(100))
    y = torch.randint(0, 10, (32,), generator=gen(101))
    start = time.perf_counter()
    final = {}
    for norm in ("standard", "bn"):
        model = build_vgg("vgg11", norm, width_mult=0.125, generator=gen(0))
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        losses = []
        for _ in range(60):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        final[norm] = losses[-1]
        assert losses[-1] < losses[0] - 0.1, (norm, losses[0], losses[-1])
    # BN memorises the batch within 60 steps; the Glorot-initialised plain net is still near chance (PROTOCOL §2).
    assert final["bn"] < 0.1
    assert time.perf_counter() - start < 5.0


# ---------------------------------------------------------------- DLN


def test_dln_structure_and_init():
    model = build_dln(25, 10, "bn", generator=gen(0))
    assert len(model.linears) == 25 and len(model.norms) == 25 and len(model.blocks) == 25
    for k, (block, linear) in enumerate(zip(model.blocks, model.linears), start=1):
        assert block[0] is linear and linear.bias is None and linear.weight.shape == (10, 10)
        assert model.layer_params(k) == [linear.weight]
    assert all(isinstance(n, nn.BatchNorm1d) for n in model.norms[:-1])
    assert isinstance(model.norms[-1], nn.Identity)
    weights = torch.stack([lin.weight.detach() for lin in model.linears]).double()
    bound = math.sqrt(6.0 / 20.0)
    assert weights.abs().max().item() <= bound
    assert weights.var().item() == pytest.approx(0.1, rel=5 * math.sqrt(0.8 / weights.numel()))
    again = build_dln(25, 10, "bn", generator=gen(0))
    assert all(torch.equal(a.weight, b.weight) for a, b in zip(model.linears, again.linears))


@pytest.mark.parametrize("norm", ["standard", "bn", "l1", "l2", "linf"])
def test_dln_forward_backward(norm):
    model = build_dln(6, 4, norm, generator=gen(0))
    x, y, _ = make_dln_data(32, 4, generator=gen(1))
    loss = dln_loss(model(x), y)
    loss.backward()
    assert torch.isfinite(loss) and all(model.layer_params(k)[0].grad.abs().sum() > 0 for k in range(1, 7))


def test_dln_standard_is_the_matrix_product():
    # With no norm the network is x -> x W_1^T ... W_depth^T.
    model = build_dln(5, 3, "standard", generator=gen(2)).double()
    x = torch.randn(7, 3, generator=gen(3), dtype=torch.float64)
    product = np.eye(3)
    for linear in model.linears:
        product = linear.weight.detach().numpy() @ product
    np.testing.assert_allclose(model(x).detach().numpy(), x.numpy() @ product.T, rtol=1e-10)


def test_make_dln_data():
    x, y, a = make_dln_data(1000, 10, generator=gen(4))
    assert x.shape == (1000, 10) and y.shape == (1000, 10) and a.shape == (10, 10)
    assert x.dtype == y.dtype == a.dtype == torch.float32
    for i in (0, 17, 999):
        torch.testing.assert_close(y[i], a @ x[i])
    # x ~ N(0, I): moments within ~5 standard errors.
    assert x.mean().abs().item() < 5 / math.sqrt(10000)
    assert abs(x.var().item() - 1.0) < 5 * math.sqrt(2 / 10000)
    x2, y2, a2 = make_dln_data(1000, 10, generator=gen(4))
    assert torch.equal(x, x2) and torch.equal(y, y2) and torch.equal(a, a2)


def test_dln_loss_hand_formula():
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    y = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    loss = dln_loss(pred, y)
    assert loss.item() == pytest.approx(0.5 * (1 + 4 + 4 + 9))
    loss.backward()
    torch.testing.assert_close(pred.grad, pred.detach() - y)
    with pytest.raises(ValueError, match="shape"):
        dln_loss(pred, y[:1])
