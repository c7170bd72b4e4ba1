"""Tests for bnflow.models.vgg, bnflow.models.dln (PROTOCOL §2, §6) and bnflow.models.resnet (issue 17)."""

import hashlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnflow.data import make_synthetic
from bnflow.models import (
    NORMS,
    VGG_CONFIGS,
    ActivationNoise,
    LpNorm,
    build_dln,
    build_resnet,
    build_vgg,
    dln_loss,
    make_dln_data,
    set_noise_generator,
)

from plugins.rms_norm import RMSNorm

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


# ---------------------------------------------------------------- the paper's models are unchanged by issue 17

# Recorded from the code before issue 17 (commit f901373): sha256 of the initial state_dict (keys, dtypes, shapes,
# bytes) and the loss before / after one SGD step, for a VGG-11 at 1/8 width and a 4-layer DLN of every paper variant.
PAPER_REFERENCE = {
    ("vgg", "standard"): ("4b07a411b65a47117f3d0279bdcfdf3311e89386059b5ec7c6ab864a6010e264", 2.2949905395507812, 2.2121856212615967),
    ("vgg", "bn"): ("dd8a4df293966fe8c18ac341aadec05c3ebade55adeb0ed876cecb467bd45f14", 3.12211275100708, 1.8304656744003296),
    ("vgg", "noisy_bn"): ("b28cc0130ad0b6876d194c6e6ea904444b1834f8e8de0128055c5cc7f85de666", 3.5794217586517334, 1.4225142002105713),
    ("vgg", "noisy_standard"): ("4b07a411b65a47117f3d0279bdcfdf3311e89386059b5ec7c6ab864a6010e264", 2.387688398361206, 2.1193408966064453),
    ("vgg", "l1"): ("ef4f4475276eea94b9096f269183db96b5ccae7645cd54f44abd0d4352b66263", 3.6186892986297607, 1.8383870124816895),
    ("vgg", "l2"): ("ef4f4475276eea94b9096f269183db96b5ccae7645cd54f44abd0d4352b66263", 3.200620412826538, 1.8577572107315063),
    ("vgg", "linf"): ("ef4f4475276eea94b9096f269183db96b5ccae7645cd54f44abd0d4352b66263", 2.577723503112793, 1.8797039985656738),
    ("dln", "standard"): ("4759a69298413458c17158a9e27cc03ca679e71c65b778b6dc1a41220d3c8022", 1794.0899658203125, 1372.6885986328125),
    ("dln", "bn"): ("d0e003e941a2a43c84fe6c27ecb1b554db077295ed64054e2c3f8f0226df72b6", 1814.532958984375, 1389.101806640625),
    ("dln", "noisy_bn"): ("2f96cb0f8e5dab7bf316802e85b3c61717d70983ec21d37ab86b9b01da33694a", 1857.69580078125, 1383.789306640625),
    ("dln", "noisy_standard"): ("4759a69298413458c17158a9e27cc03ca679e71c65b778b6dc1a41220d3c8022", 1935.752197265625, 1435.087646484375),
    ("dln", "l1"): ("a6308b6919b587732c500e274980e8ab4640ef0b1028bfd2d37040c8d9746700", 1901.0487060546875, 1331.7117919921875),
    ("dln", "l2"): ("a6308b6919b587732c500e274980e8ab4640ef0b1028bfd2d37040c8d9746700", 1815.673583984375, 1388.4613037109375),
    ("dln", "linf"): ("a6308b6919b587732c500e274980e8ab4640ef0b1028bfd2d37040c8d9746700", 1710.719970703125, 1589.0924072265625),
}


def state_dict_sha256(model: nn.Module) -> str:
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(str(value.dtype).encode())
        h.update(str(tuple(value.shape)).encode())
        h.update(value.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def losses_around_one_step(model, x, y, loss_fn, lr):
    set_noise_generator(model, gen(1))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    first = loss_fn(model(x), y)
    first.backward()
    opt.step()
    return first.item(), loss_fn(model(x), y).item()


@pytest.mark.parametrize("model_name, variant", sorted(PAPER_REFERENCE))
def test_paper_variants_build_the_weights_and_numbers_recorded_before_issue_17(model_name, variant):
    sha, loss0, loss1 = PAPER_REFERENCE[(model_name, variant)]
    if model_name == "vgg":
        model = build_vgg("vgg11", variant, width_mult=0.125, generator=gen(0))
        g = gen(2)
        x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)
        loss_fn, lr = F.cross_entropy, 0.1
    else:
        model = build_dln(4, 10, variant, generator=gen(0))
        x, y, _ = make_dln_data(32, 10, generator=gen(3))
        loss_fn, lr = dln_loss, 1e-3
    assert state_dict_sha256(model) == sha
    got = losses_around_one_step(model, x, y, loss_fn, lr)
    assert got == pytest.approx((loss0, loss1), rel=1e-5)


# ---------------------------------------------------------------- ResNet (beyond the paper, issue 17)


def reference_resnet_forward(model, x):
    """An independent forward of the ResNet from its parameters: stem, then per block
    relu(norm2(conv2(relu(norm1(conv1(h))))) + shortcut(h)), shortcut = subsample and zero channels (option A)."""
    def unit(block, h):
        return block[1](block[0](h))

    h = F.relu(unit(model.blocks[0], x))
    for b in range(1, len(model.blocks), 2):
        conv1, conv2 = model.blocks[b][0], model.blocks[b + 1][0]
        inner = F.relu(unit(model.blocks[b], h))
        short = h[:, :, ::conv1.stride[0], ::conv1.stride[0]]
        short = torch.cat([short, short.new_zeros(short.shape[0], conv2.out_channels - short.shape[1],
                                                  *short.shape[2:])], dim=1)
        h = F.relu(unit(model.blocks[b + 1], inner) + short)
    return F.linear(h.mean(dim=(2, 3)), model.classifier.weight, model.classifier.bias)


def test_resnet20_structure_numbering_and_size():
    model = build_resnet(20, "bn", generator=gen(0))
    assert len(model.blocks) == len(model.convs) == len(model.norms) == 19
    assert [c.out_channels for c in model.convs] == [16] * 7 + [32] * 6 + [64] * 6
    # stride 2 in conv1 of the first block of stages 2 and 3: layers #8 and #14
    assert [k for k, c in enumerate(model.convs, start=1) if c.stride == (2, 2)] == [8, 14]
    assert model.residual_closers == [3, 5, 7, 9, 11, 13, 15, 17, 19]
    for k, block in enumerate(model.blocks, start=1):
        conv, norm, relu = block
        assert conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.bias is not None
        assert isinstance(norm, nn.BatchNorm2d) and isinstance(relu, nn.ReLU) and not relu.inplace
        assert model.layer_params(k) == [conv.weight, conv.bias]
    n_weights = sum(p.numel() for p in model.parameters())
    assert 0.26e6 < n_weights < 0.28e6  # He et al. 2016, Table 6: ResNet-20 has 0.27M parameters
    assert model.classifier.in_features == 64
    with pytest.raises(ValueError, match="6n \\+ 2"):
        build_resnet(18, "bn", generator=gen(0))


@pytest.mark.parametrize("norm", ["bn", "standard", "group_norm", "weight_norm"])
def test_resnet_forward_is_the_residual_network_of_the_docstring(norm):
    model = build_resnet(8, norm, width_mult=0.5, generator=gen(0)).double()
    with torch.no_grad():  # move every parameter off its init so zeroed branches and gamma = 1 cannot hide a bug
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen(9), dtype=torch.float64))
    x = torch.randn(5, 3, 16, 16, generator=gen(1), dtype=torch.float64)
    torch.testing.assert_close(model(x), reference_resnet_forward(model, x))
    assert model(x).shape == (5, 10)


def test_resnet_init_zeroes_residual_branches_only_without_an_activation_norm():
    for norm in NORMS:
        model = build_resnet(8, norm, width_mult=0.5, generator=gen(0))
        closers = [model.convs[k - 1] for k in model.residual_closers]
        zero = [bool(torch.all(c.weight == 0)) for c in closers]
        assert all(zero) == (norm in ("standard", "noisy_standard", "weight_norm")) and (all(zero) or not any(zero))
        if norm == "weight_norm":  # zero through g; v keeps the Glorot draw so that v / ||v|| is defined
            assert all(torch.all(c.parametrizations.weight.original0 == 0) for c in closers)
            assert all(c.parametrizations.weight.original1.abs().sum() > 0 for c in closers)
    # the other convs draw the same Glorot weights in every variant
    a, b = build_resnet(8, "standard", width_mult=0.5, generator=gen(0)), build_resnet(8, "bn", width_mult=0.5,
                                                                                      generator=gen(0))
    for k in range(1, 8):
        if k not in a.residual_closers:
            assert torch.equal(a.convs[k - 1].weight, b.convs[k - 1].weight)


def test_standard_resnet_starts_as_a_shallow_network_and_weight_norm_computes_it_too():
    # Every block is the identity at init: logits = classifier(mean over positions of the padded, subsampled stem).
    x = torch.randn(4, 3, 16, 16, generator=gen(2))
    for norm in ("standard", "weight_norm"):
        model = build_resnet(14, norm, width_mult=0.5, generator=gen(0))
        stem = F.relu(model.convs[0](x))
        h = stem[:, :, ::4, ::4]
        h = torch.cat([h, h.new_zeros(4, 32 - 8, *h.shape[2:])], dim=1)
        torch.testing.assert_close(model(x), model.classifier(h.mean(dim=(2, 3))), rtol=1e-5, atol=1e-6)


def test_standard_resnet_trains_on_tiny_synthetic_data():
    # The zero-initialised branches must not freeze training: 100 SGD steps at the paper's lr on the synthetic
    # 10-class images. Like the paper's Glorot-initialised standard VGG, it learns slowly but surely; BN fast.
    data = make_synthetic(0, 512, 64)
    x = torch.from_numpy(data.train_images).permute(0, 3, 1, 2).float()
    x = (x - x.mean(dim=(0, 2, 3), keepdim=True)) / x.std(dim=(0, 2, 3), keepdim=True)
    y = torch.from_numpy(data.train_labels).long()
    for norm in ("standard", "bn"):
        model = build_resnet(8, norm, width_mult=0.5, generator=gen(0))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        losses, accs = [], []
        for step in range(100):
            idx = torch.randperm(512, generator=gen(step))[:32]
            out = model(x[idx])
            loss = F.cross_entropy(out, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            accs.append((out.argmax(dim=1) == y[idx]).float().mean().item())
        first, last = np.mean(losses[:20]), np.mean(losses[-20:])
        assert last < first - (0.1 if norm == "standard" else 1.0), (norm, first, last)
        assert np.mean(accs[-20:]) > (0.17 if norm == "standard" else 0.8), norm  # chance is 0.1
        # every layer moved: the zero branches grew and then passed gradient to the layers before them
        assert all(p.grad.abs().sum() > 0 for k in range(1, 8) for p in model.layer_params(k)), norm


@pytest.mark.parametrize("norm", [*NORMS, "rms_plugin"])
def test_resnet_every_norm_trains_forward_and_backward(norm):
    plugin = {"plugin": RMSNorm} if norm == "rms_plugin" else {}
    model = build_resnet(8, norm, width_mult=0.5, num_classes=7, generator=gen(0), **plugin)
    set_noise_generator(model, gen(5))
    x = torch.randn(4, 3, 16, 16, generator=gen(1))
    F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("norm", ["group_norm", "layer_norm", "weight_norm", "batch_norm_no_affine"])
def test_vgg_and_dln_take_the_new_variants(norm):
    vgg = build_vgg("vgg11", norm, width_mult=0.125, generator=gen(0), groups=4)
    ref = build_vgg("vgg11", "standard", width_mult=0.125, generator=gen(0))
    if norm == "weight_norm":  # same draw, reparametrised: the same function at init, g/v/bias as layer #k's params
        x = torch.randn(2, 3, 32, 32, generator=gen(1))
        torch.testing.assert_close(vgg(x), ref(x), rtol=1e-5, atol=1e-6)
        conv = vgg.convs[2]
        assert {id(p) for p in vgg.layer_params(3)} == {id(conv.bias), id(conv.parametrizations.weight.original0),
                                                         id(conv.parametrizations.weight.original1)}
        assert not hasattr(vgg.classifier, "parametrizations")  # the classifier has no norm slot
    if norm == "group_norm":  # 4 groups requested; 8 channels at 1/8 width: 4 groups, every layer divisible
        assert [n.num_groups for n in vgg.norms] == [4] * 8
    dln = build_dln(5, 6, norm, generator=gen(0), groups=32)
    x, y, _ = make_dln_data(16, 6, generator=gen(2))
    dln_loss(dln(x), y).backward()
    assert all(p.grad is not None for k in range(1, 6) for p in dln.layer_params(k))
    assert isinstance(dln.norms[-1], nn.Identity) and not hasattr(dln.linears[-1], "parametrizations")
    if norm == "group_norm":
        assert dln.norms[0].num_groups == 3  # (N, C) rule: at most C // 2 = 3 groups of 6 features
