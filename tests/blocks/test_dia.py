"""Tests of the DIA family (medattn.blocks.dia).

References used here, none of them the module's own code: the paper's parameter counts
(Sec. 7.2 and Table 10), a NumPy brute-force LSTM step written from Sec. 4.2.2, hand-written
stage loops of Table 2 / Eq. 2, and PyTorch autograd on unshared copies for the gradient
accumulation of shared parameters.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from medattn.blocks import available, create
from medattn.blocks.dia import (
    DIALSTMCell,
    DIAStage,
    DIAUnit,
    ElementwiseAffine,
    SharedAttentionUnit,
    create_unit,
    unit_kinds,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _jitter_(module: nn.Module, seed: int = 0) -> None:
    """Randomise every parameter so zero/one initialisations hide nothing."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device))


class ToyChannelAttention(nn.Module):
    """An SE-like attention with a BatchNorm inside (the case of Sec. 7.3.2)."""

    def __init__(self, channels: int, spatial_dims: int = 2, hidden: int | None = None):
        super().__init__()
        hidden = hidden or max(2, channels // 2)
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d
        self.fc1 = conv(channels, hidden, 1)
        self.norm = norm(hidden)
        self.fc2 = conv(hidden, channels, 1)

    def forward(self, x):
        squeezed = x.mean(tuple(range(2, x.ndim)), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.norm(self.fc1(squeezed)))))


def _conv_block(channels_in, channels_out, spatial_dims, stride=1):
    conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    norm = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d
    return nn.Sequential(
        conv(channels_in, channels_out, 3, stride=stride, padding=1), norm(channels_out), nn.LeakyReLU(0.01)
    )


def _spatial(spatial_dims, size=(5, 6, 7)):
    return size[-spatial_dims:]


# --------------------------------------------------------------------------- references


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def _sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


def _bruteforce_path(weights_1, bias_1, weights_2, bias_2, v):
    """Linear N->R, ReLU, Linear R->4N with explicit sums."""
    hidden = [
        max(0.0, sum(weights_1[r, n] * v[n] for n in range(len(v))) + bias_1[r]) for r in range(len(bias_1))
    ]
    return [
        sum(weights_2[k, r] * hidden[r] for r in range(len(hidden))) + bias_2[k] for k in range(len(bias_2))
    ]


def bruteforce_lstm_step(cell: DIALSTMCell, y, h, c, output_act=_sigmoid):
    """Sec. 4.2.2, one sample at a time, scalar by scalar (gate order i, f, g, o)."""
    p = {name: _np(t) for name, t in cell.named_parameters()}
    y, h, c = _np(y), _np(h), _np(c)
    batch, n = y.shape
    h_out, c_out = np.zeros((batch, n)), np.zeros((batch, n))
    for b in range(batch):
        z_in = _bruteforce_path(
            p["input_path.reduce.weight"], p["input_path.reduce.bias"],
            p["input_path.gates.weight"], p["input_path.gates.bias"], y[b],
        )
        if cell.light:  # four element-wise IE transforms (Eq. 5) on h
            weight, bias = p["hidden_path.weight"], p["hidden_path.bias"]
            z_hid = [weight[k // n, k % n] * h[b, k % n] + bias[k // n, k % n] for k in range(4 * n)]
        else:
            z_hid = _bruteforce_path(
                p["hidden_path.reduce.weight"], p["hidden_path.reduce.bias"],
                p["hidden_path.gates.weight"], p["hidden_path.gates.bias"], h[b],
            )
        for j in range(n):
            i_gate = _sigmoid(z_in[j] + z_hid[j])
            f_gate = _sigmoid(z_in[n + j] + z_hid[n + j])
            g_gate = math.tanh(z_in[2 * n + j] + z_hid[2 * n + j])
            o_gate = _sigmoid(z_in[3 * n + j] + z_hid[3 * n + j])
            c_out[b, j] = f_gate * c[b, j] + i_gate * g_gate
            h_out[b, j] = o_gate * output_act(c_out[b, j])
    return h_out, c_out


def torch_lstm_step(cell: DIALSTMCell, y, h, c):
    """The same step with functional torch ops (for autograd in hand-written loops)."""
    def path(prefix, v):
        v = torch.relu(nn.functional.linear(v, cell.get_parameter(f"{prefix}.reduce.weight"),
                                            cell.get_parameter(f"{prefix}.reduce.bias")))
        return nn.functional.linear(v, cell.get_parameter(f"{prefix}.gates.weight"),
                                    cell.get_parameter(f"{prefix}.gates.bias"))

    if cell.light:
        w, b = cell.hidden_path.weight, cell.hidden_path.bias
        z_hid = torch.cat([h * w[k] + b[k] for k in range(4)], dim=1)
    else:
        z_hid = path("hidden_path", h)
    z = path("input_path", y) + z_hid
    n = y.shape[1]
    i_g, f_g, g_g, o_g = (z[:, k * n:(k + 1) * n] for k in range(4))
    c_new = torch.sigmoid(f_g) * c + torch.sigmoid(i_g) * torch.tanh(g_g)
    return torch.sigmoid(o_g) * torch.sigmoid(c_new), c_new


def hand_written_stage(x, blocks, cell, shortcuts=None, residual=True, post_act=None):
    """Table 2 / Eq. 2 written out: GAP, LSTM with zero start, a ⊗ h, optional skip."""
    batch = x.shape[0]
    h = c = None
    for t, block in enumerate(blocks):
        a = block(x)
        if h is None:
            h = torch.zeros(batch, a.shape[1], dtype=a.dtype)
            c = torch.zeros(batch, a.shape[1], dtype=a.dtype)
        pooled = a.flatten(2).mean(-1)
        h, c = torch_lstm_step(cell, pooled, h, c)
        recalibrated = a * h.view(*h.shape, *([1] * (a.ndim - 2)))
        if residual:
            skip = x if shortcuts is None or shortcuts[t] is None else shortcuts[t](x)
            x = skip + recalibrated
        else:
            x = recalibrated
        if post_act is not None:
            x = post_act(x)
    return x


# --------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize(
    "channels, rd_ratio, rd_channels, expected_r",
    [
        (64, 1 / 4, None, 16),
        (48, 1 / 8, None, 6),
        (7, 1 / 4, None, 2),
        (20, 1 / 4, 3, 3),
        (16, 1.0, None, 16),
    ],
)
def test_lstm_cell_parameter_count_matches_formula(channels, rd_ratio, rd_channels, expected_r):
    n, r_ch = channels, expected_r
    cell = DIALSTMCell(channels, rd_ratio=rd_ratio, rd_channels=rd_channels)
    assert cell.rd_channels == r_ch
    assert _n_params(cell) == 10 * n * r_ch + 2 * r_ch + 8 * n
    light = DIALSTMCell(channels, rd_ratio=rd_ratio, rd_channels=rd_channels, light=True)
    assert _n_params(light) == 5 * n * r_ch + r_ch + 12 * n


@pytest.mark.parametrize("channels, r", [(64, 4), (128, 8), (32, 1)])
def test_lstm_weights_are_exactly_10_n_squared_over_r(channels, r):
    """Sec. 7.2 counts weights only (biases omitted): 10 N²/r."""
    cell = DIALSTMCell(channels, rd_ratio=1 / r)
    weights = sum(p.numel() for name, p in cell.named_parameters() if name.endswith("weight"))
    assert weights == 10 * channels**2 // r


@pytest.mark.parametrize("r, paper_increment_m", [(1, 0.86), (4, 0.22), (8, 0.11), (16, 0.05)])
def test_resnet164_increments_match_paper_table10(r, paper_increment_m):
    """Table 10: ResNet164 (CIFAR-100) stages of 64, 128, 256 channels, one unit each."""
    total = sum(_n_params(DIAUnit(n, rd_ratio=1 / r)) for n in (64, 128, 256))
    assert abs(total / 1e6 - paper_increment_m) <= 0.01


def test_unit_parameters_do_not_grow_with_blocks():
    unit = DIAUnit(16)
    for num_blocks in (1, 4):
        stage = DIAStage([_conv_block(16, 16, 2) for _ in range(num_blocks)], unit, residual=False)
        backbone = sum(_n_params(b) for b in stage.blocks)
        assert _n_params(stage) - backbone == _n_params(DIALSTMCell(16))


def test_elementwise_affine_is_eq5():
    ie = ElementwiseAffine(5, num_transforms=2)
    _jitter_(ie)
    x = torch.randn(3, 5)
    expected = torch.cat([ie.weight[0] * x + ie.bias[0], ie.weight[1] * x + ie.bias[1]], dim=1)
    torch.testing.assert_close(ie(x), expected)


# --------------------------------------------------------------------------- the LSTM step


@pytest.mark.parametrize("light", [False, True])
@pytest.mark.parametrize("start", ["zeros", "given"])
def test_cell_matches_bruteforce(light, start):
    torch.manual_seed(1)
    cell = DIALSTMCell(6, rd_ratio=1 / 3, light=light).double()
    _jitter_(cell)
    y = torch.randn(3, 6, dtype=torch.float64)
    if start == "zeros":
        state = None
        h0 = c0 = torch.zeros(3, 6, dtype=torch.float64)
    else:
        h0, c0 = torch.rand(3, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
        state = (h0, c0)
    h, c = cell(y, state)
    h_ref, c_ref = bruteforce_lstm_step(cell, y, h0, c0)
    np.testing.assert_allclose(_np(c), c_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_np(h), h_ref, rtol=1e-12, atol=1e-12)
    assert ((h > 0) & (h < 1)).all()  # a sigmoid output layer keeps the attention in (0, 1)


def test_cell_tanh_output_ablation_matches_bruteforce():
    cell = DIALSTMCell(5, rd_channels=2, gate_layer="tanh").double()
    _jitter_(cell)
    y, h0, c0 = (torch.randn(2, 5, dtype=torch.float64) for _ in range(3))
    h, c = cell(y, (h0, c0))
    h_ref, c_ref = bruteforce_lstm_step(cell, y, h0, c0, output_act=math.tanh)
    np.testing.assert_allclose(_np(h), h_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_np(c), c_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("light", [False, True])
def test_zero_start_on_input_device_and_float64(device, light):
    unit = DIAUnit(8, spatial_dims=3, light=light).double().to(device)
    x = torch.randn(2, 8, 3, 4, 5, dtype=torch.float64, device=device)
    y, (h, c) = unit(x)
    assert y.dtype == h.dtype == c.dtype == torch.float64
    assert y.device == h.device == c.device == x.device
    zeros = torch.zeros(2, 8, dtype=torch.float64, device=device)
    y_explicit, (h_explicit, _) = unit(x, (zeros, zeros))
    torch.testing.assert_close(y, y_explicit, rtol=0, atol=0)
    h_ref, _ = bruteforce_lstm_step(unit.cell, x.mean(dim=(2, 3, 4)), zeros, zeros)
    np.testing.assert_allclose(_np(h), h_ref, rtol=1e-12, atol=1e-12)


def test_unit_recalibrates_channelwise():
    unit = DIAUnit(4)
    x = torch.randn(2, 4, 3, 5)
    y, (h, _) = unit(x)
    torch.testing.assert_close(y, x * h[:, :, None, None])


# --------------------------------------------------------------------------- no hidden state


def _attribute_snapshot(module: nn.Module):
    return {name: sorted(vars(m)) for name, m in module.named_modules()}


@pytest.mark.parametrize("kind", ["lstm", "light", "toy"])
def test_no_state_leaks_between_forward_calls(kind):
    torch.manual_seed(0)
    unit = _unit(kind, 6, 2, num_blocks=3)
    stage = DIAStage([_conv_block(6, 6, 2) for _ in range(3)], unit, residual=True).eval()
    x, other = torch.randn(2, 6, 7, 5), torch.randn(2, 6, 7, 5)
    before = _attribute_snapshot(stage)
    first = stage(x)
    stage(other)
    again = stage(x)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert _attribute_snapshot(stage) == before


@pytest.mark.parametrize("kind", ["lstm", "light", "toy"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_batch_items_do_not_interact(kind, spatial_dims):
    torch.manual_seed(0)
    stage = DIAStage(
        [_conv_block(5, 5, spatial_dims) for _ in range(3)], _unit(kind, 5, spatial_dims, num_blocks=3)
    ).eval()
    x = torch.randn(3, 5, *_spatial(spatial_dims))
    whole = stage(x)
    for b in range(3):
        torch.testing.assert_close(whole[b : b + 1], stage(x[b : b + 1]), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- stages


def _unit(kind: str, channels: int, spatial_dims: int, num_blocks: int) -> nn.Module:
    if kind == "toy":
        return SharedAttentionUnit(ToyChannelAttention, channels, num_blocks, spatial_dims=spatial_dims)
    return create_unit(kind, channels, spatial_dims=spatial_dims, num_blocks=num_blocks)


@pytest.mark.parametrize("light", [False, True])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_residual_stage_equals_hand_written_loop(light, spatial_dims):
    torch.manual_seed(2)
    conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    blocks = [_conv_block(3, 6, spatial_dims, stride=2)] + [_conv_block(6, 6, spatial_dims) for _ in range(2)]
    shortcuts = [conv(3, 6, 1, stride=2), None, None]
    unit = DIAUnit(6, spatial_dims=spatial_dims, rd_ratio=1 / 2, light=light)
    _jitter_(unit)
    stage = DIAStage(blocks, unit, residual=True, shortcuts=shortcuts, post_act="relu").eval()
    x = torch.randn(2, 3, *_spatial(spatial_dims, (9, 8, 7)))
    expected = hand_written_stage(x, blocks, unit.cell, shortcuts, residual=True, post_act=torch.relu)
    torch.testing.assert_close(stage(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("light", [False, True])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_plain_stage_equals_hand_written_loop(light, spatial_dims):
    torch.manual_seed(3)
    blocks = [_conv_block(2, 5, spatial_dims, stride=2), _conv_block(5, 5, spatial_dims)]
    unit = DIAUnit(5, spatial_dims=spatial_dims, rd_channels=2, light=light)
    _jitter_(unit)
    stage = DIAStage(blocks, unit, residual=False).eval()
    x = torch.randn(2, 2, *_spatial(spatial_dims, (7, 6, 9)))
    expected = hand_written_stage(x, blocks, unit.cell, residual=False)
    torch.testing.assert_close(stage(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("light", [False, True])
def test_lstm_gradient_accumulates_over_blocks(light):
    """The shared cell's gradient is the sum of the gradients of per-block copies."""
    torch.manual_seed(4)
    blocks = [_conv_block(4, 4, 2) for _ in range(3)]
    unit = DIAUnit(4, rd_channels=2, light=light)
    _jitter_(unit)
    stage = DIAStage(blocks, unit, residual=True)
    x = torch.randn(2, 4, 6, 5)
    stage(x).square().sum().backward()

    copies = [copy.deepcopy(unit.cell) for _ in blocks]
    h = c = torch.zeros(2, 4)
    xs = x
    for block, cell in zip(blocks, copies):
        a = block(xs)
        h, c = torch_lstm_step(cell, a.mean(dim=(2, 3)), h, c)
        xs = xs + a * h[:, :, None, None]
    xs.square().sum().backward()
    for name, shared in unit.cell.named_parameters():
        per_block = [cell.get_parameter(name).grad for cell in copies]
        torch.testing.assert_close(shared.grad, sum(per_block), rtol=1e-4, atol=1e-6)
    # Every block contributes to the shared gradient, not only the last one.
    first_gates = [cell.input_path.gates.weight.grad for cell in copies]
    assert all(g.abs().sum() > 0 for g in first_gates)


# --------------------------------------------------------------------------- shared classic attention


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_shared_attention_shares_weights_and_keeps_norms_per_block(spatial_dims):
    torch.manual_seed(5)
    num_blocks, channels = 3, 6
    unit = SharedAttentionUnit(ToyChannelAttention, channels, num_blocks, spatial_dims=spatial_dims, hidden=3)
    _jitter_(unit)
    single = ToyChannelAttention(channels, spatial_dims, hidden=3)
    norm_params = _n_params(single.norm)
    assert _n_params(unit) == _n_params(single) + (num_blocks - 1) * norm_params
    first, others = unit.blocks[0], unit.blocks[1:]
    for block in others:
        assert block.fc1.weight is first.fc1.weight and block.fc2.bias is first.fc2.bias
        assert block.norm is not first.norm

    # Reference: unshared, independent per-block copies of exactly the same weights.
    references = [copy.deepcopy(block) for block in unit.blocks]
    blocks = [_conv_block(channels, channels, spatial_dims) for _ in range(num_blocks)]
    stage = DIAStage(blocks, unit, residual=True)
    x = torch.randn(4, channels, *_spatial(spatial_dims))
    out = stage(x)
    expected = x
    for block, reference in zip(blocks, references):
        expected = expected + reference(block(expected))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)

    out.square().sum().backward()
    expected.square().sum().backward()
    for name in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"):
        summed = sum(ref.get_parameter(name).grad for ref in references)
        torch.testing.assert_close(first.get_parameter(name).grad, summed, rtol=1e-4, atol=1e-6)
    for block, reference in zip(unit.blocks, references):
        torch.testing.assert_close(block.norm.weight.grad, reference.norm.weight.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(block.norm.running_mean, reference.norm.running_mean)
    # Each block's norm saw its own statistics.
    assert not torch.allclose(unit.blocks[0].norm.running_mean, unit.blocks[1].norm.running_mean)


def test_shared_attention_state_dict_holds_shared_weights_once():
    unit = SharedAttentionUnit(ToyChannelAttention, 4, 3)
    keys = list(unit.state_dict())
    assert [k for k in keys if "fc1.weight" in k] == ["blocks.0.fc1.weight"]
    assert sum("norm.running_mean" in k for k in keys) == 3
    _jitter_(unit, seed=9)
    stage = DIAStage([_conv_block(4, 4, 2) for _ in range(3)], unit).train()
    stage(torch.randn(3, 4, 5, 5))  # moves the running statistics
    stage.eval()
    clone = DIAStage([_conv_block(4, 4, 2) for _ in range(3)], SharedAttentionUnit(ToyChannelAttention, 4, 3))
    clone.load_state_dict(stage.state_dict())  # strict: every key accounted for
    clone.eval()
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(clone(x), stage(x), rtol=0, atol=0)
    assert clone.unit.blocks[2].fc2.weight is clone.unit.blocks[0].fc2.weight


def test_shared_attention_stays_shared_after_conversion_and_copy():
    unit = SharedAttentionUnit(ToyChannelAttention, 4, 2).double()
    assert unit.blocks[1].fc1 is unit.blocks[0].fc1 and unit.blocks[1].fc1.weight.dtype == torch.float64
    duplicate = copy.deepcopy(unit)
    assert duplicate.blocks[1].fc1 is duplicate.blocks[0].fc1
    assert duplicate.blocks[1].fc1 is not unit.blocks[0].fc1


def test_shared_attention_state_is_the_block_index():
    unit = SharedAttentionUnit(ToyChannelAttention, 4, 2).eval()
    x = torch.randn(2, 4, 3, 3)
    y0, state = unit(x)
    assert state == 1
    torch.testing.assert_close(y0, unit.blocks[0](x))
    y1, state = unit(x, state)
    assert state == 2
    torch.testing.assert_close(y1, unit.blocks[1](x))
    with pytest.raises(ValueError, match=r"block index in \[0, 2\)"):
        unit(x, 2)


@pytest.mark.parametrize("name, kwargs", [("se", {"rd_ratio": 1 / 4}), ("eca", {})])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_se_and_eca_shared_across_a_stage(name, kwargs, spatial_dims):
    torch.manual_seed(6)
    unit = create_unit(name, 16, spatial_dims=spatial_dims, num_blocks=4, **kwargs)
    single = create(name, 16, spatial_dims=spatial_dims, **kwargs)
    assert _n_params(unit) == _n_params(single)  # no norms inside: everything is shared
    single.load_state_dict(unit.blocks[0].state_dict())
    x = torch.randn(2, 16, *_spatial(spatial_dims))
    for t in range(4):
        y, state = unit(x, None if t == 0 else t)
        assert state == t + 1
        torch.testing.assert_close(y, single(x))
    stage = DIAStage([_conv_block(16, 16, spatial_dims) for _ in range(4)], unit)
    assert stage(x).shape == x.shape


def test_classic_block_with_custom_layer_norm_keeps_it_per_block():
    unit = SharedAttentionUnit("gc", 16, 2)
    norms = [[m for m in block.modules() if type(m).__name__.endswith("Norm")] for block in unit.blocks]
    assert norms[0] and norms[1] and norms[0][0] is not norms[1][0]
    shared_convs = [m for m in unit.blocks[0].modules() if isinstance(m, nn.Conv2d)]
    assert all(any(m is c for m in unit.blocks[1].modules()) for c in shared_convs)


# --------------------------------------------------------------------------- block-wide properties


@pytest.mark.parametrize("kind", ["lstm", "light", "toy"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("train", [True, False])
def test_shapes_and_gradients_reach_every_parameter_and_the_input(kind, spatial_dims, train):
    torch.manual_seed(7)
    # 16 channels: a reduction of 4 ReLU units, so that no single dead unit can starve a weight.
    unit = _unit(kind, 16, spatial_dims, num_blocks=2)
    stage = DIAStage([_conv_block(16, 16, spatial_dims) for _ in range(2)], unit).train(train)
    _jitter_(stage)
    for batch, size in ((1, (3, 5, 7)), (2, (4, 4, 4))):
        x = torch.randn(batch, 16, *_spatial(spatial_dims, size), requires_grad=True)
        if train and batch == 1 and kind == "toy":
            continue  # BatchNorm on a 1x1 squeezed map cannot train with batch size 1
        out = stage(x)
        assert out.shape == x.shape
        stage.zero_grad()
        out.sin().sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
        for name, p in unit.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kind", ["lstm", "light", "toy"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_bf16_autocast_is_finite_and_close(kind, spatial_dims):
    torch.manual_seed(8)
    stage = DIAStage(
        [_conv_block(8, 8, spatial_dims) for _ in range(3)], _unit(kind, 8, spatial_dims, num_blocks=3)
    ).eval()
    _jitter_(stage.unit)
    x = torch.randn(2, 8, *_spatial(spatial_dims))
    with torch.no_grad():
        reference = stage(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = stage(x)
    assert torch.isfinite(low).all()
    scale = reference.abs().max()
    torch.testing.assert_close(low.float(), reference, rtol=5e-2, atol=5e-2 * float(scale))


@pytest.mark.parametrize("kind", ["lstm", "light"])
def test_unit_state_dict_round_trip(kind):
    unit = create_unit(kind, 12, spatial_dims=3)
    _jitter_(unit)
    clone = create_unit(kind, 12, spatial_dims=3)
    clone.load_state_dict(unit.state_dict())
    x = torch.randn(2, 12, 3, 4, 5)
    state = (torch.rand(2, 12), torch.randn(2, 12))
    torch.testing.assert_close(clone(x, state)[0], unit(x, state)[0], rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lstm", "toy"])
def test_torch_compile_stage(kind):
    torch.manual_seed(9)
    conv = nn.Conv3d
    stage = DIAStage(
        [_conv_block(4, 6, 3, stride=2), _conv_block(6, 6, 3)],
        _unit(kind, 6, 3, num_blocks=2),
        shortcuts=[conv(4, 6, 1, stride=2), None],
        post_act="relu",
    ).eval()
    _jitter_(stage.unit)
    x = torch.randn(2, 4, 8, 8, 8)
    compiled = torch.compile(stage, backend="inductor")
    torch.testing.assert_close(compiled(x), stage(x), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- factory and errors


def test_unit_kinds_and_factory():
    assert unit_kinds() == ["lstm", "light", "se", "eca"]
    assert isinstance(create_unit("lstm", 8), DIAUnit) and not create_unit("lstm", 8).cell.light
    assert create_unit("LIGHT", 8, spatial_dims=3).cell.light
    assert create_unit("lstm", 32, rd_ratio=1 / 8).cell.rd_channels == 4


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: create_unit("gru", 8),
            r"unknown DIA unit kind 'gru'; choose one of \['lstm', 'light', 'se', 'eca'\]",
        ),
        (lambda: create_unit("lstm", 8, light=True), r"unknown argument\(s\) \['light'\].*valid arguments"),
        (lambda: create_unit("se", 8), r"needs num_blocks"),
        (lambda: create_unit("lstm", 8, spatial_dims=1), r"spatial_dims must be 2 or 3, got 1"),
        (lambda: DIAUnit(0), r"channels must be a positive int, got 0"),
        (lambda: DIALSTMCell(8, rd_ratio=4), r"rd_ratio must be in \(0, 1\].*got 4"),
        (lambda: DIALSTMCell(8, rd_divisor=0), r"rd_divisor must be a positive int, got 0"),
        (lambda: DIALSTMCell(8, gate_layer="softplus"), r"unknown activation 'softplus'"),
        (lambda: SharedAttentionUnit("nope", 8, 2), r"unknown attention block 'nope'"),
        (lambda: SharedAttentionUnit(ToyChannelAttention, 8, 0), r"num_blocks must be a positive int, got 0"),
        (lambda: DIAStage([], DIAUnit(4)), r"non-empty sequence"),
        (lambda: DIAStage([nn.Identity()] * 3, SharedAttentionUnit(ToyChannelAttention, 4, 2)),
         r"num_blocks=2 but the stage has 3 blocks"),
        (lambda: DIAStage([nn.Identity()], DIAUnit(4), residual=False, shortcuts=[None]), r"plain stage"),
        (
            lambda: DIAStage([nn.Identity()] * 2, DIAUnit(4), shortcuts=[None]),
            r"one entry per block \(2\), got 1",
        ),
        (lambda: DIAStage([nn.Identity()], DIAUnit(4), post_act=nn.ReLU()), r"one module per block"),
    ],
)
def test_bad_arguments_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_bad_inputs_raise_value_error():
    unit = DIAUnit(4)
    expected = r"DIAUnit expects a \(B, C, H, W\) tensor with C=4, got shape \(2, 3, 5, 5\)"
    with pytest.raises(ValueError, match=expected):
        unit(torch.randn(2, 3, 5, 5))
    with pytest.raises(ValueError, match=r"must both have shape \(2, 4\), got \(2, 4\) and \(1, 4\)"):
        unit(torch.randn(2, 4, 5, 5), (torch.zeros(2, 4), torch.zeros(1, 4)))
    with pytest.raises(ValueError, match=r"pair \(h, c\)"):
        unit(torch.randn(2, 4, 5, 5), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"DIALSTMCell expects a \(B, 4\) input"):
        unit.cell(torch.randn(2, 5))
    shared = SharedAttentionUnit(ToyChannelAttention, 4, 2, spatial_dims=3)
    with pytest.raises(ValueError, match=r"SharedAttentionUnit expects a \(B, C, D, H, W\)"):
        shared(torch.randn(2, 4, 5, 5))
    shape_changer = SharedAttentionUnit(lambda c, spatial_dims: nn.Conv2d(c, c, 3), 4, 1)
    with pytest.raises(ValueError, match=r"must keep the shape"):
        shape_changer(torch.randn(1, 4, 5, 5))


# ----------------------------------------------------------------------------- fast path vs the reference


@pytest.mark.parametrize("light", [False, True])
@pytest.mark.parametrize("gate_layer", ["sigmoid", "tanh"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_fast_unit_equals_the_reference_over_a_stage(light, gate_layer, spatial_dims):
    """Three blocks through one unit (the first from h = c = 0): outputs, states and every
    gradient of the fast cell equal the reference equations to 1e-5 in float32."""
    torch.manual_seed(light + 2 * spatial_dims)
    fast = DIAUnit(12, spatial_dims=spatial_dims, light=light, gate_layer=gate_layer)
    reference = copy.deepcopy(fast)
    reference.cell.impl = "reference"
    with torch.no_grad():  # non-trivial IE transforms, so the Light shortcut at t = 0 is tested
        for module in (fast, reference):
            for index, (name, p) in enumerate(module.named_parameters()):
                if "hidden_path" in name:
                    torch.manual_seed(index)
                    p.add_(torch.randn_like(p) * 0.3)
    inputs = [torch.randn(3, 12, *([5] * spatial_dims), requires_grad=True) for _ in range(3)]

    def stage(unit):
        state, outputs = None, []
        for x in inputs:
            y, state = unit(x, state)
            outputs.append(y)
        return outputs, state

    (fast_out, fast_state), (ref_out, ref_state) = stage(fast), stage(reference)
    for ours, theirs in zip(fast_out + list(fast_state), ref_out + list(ref_state)):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    loss_fast = sum((y * k).sum() for k, y in enumerate(fast_out, 1))
    loss_ref = sum((y * k).sum() for k, y in enumerate(ref_out, 1))
    grads_fast = torch.autograd.grad(loss_fast, inputs + list(fast.parameters()))
    grads_ref = torch.autograd.grad(loss_ref, inputs + list(reference.parameters()))
    for ours, theirs in zip(grads_fast, grads_ref):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_unknown_impl_is_refused():
    with pytest.raises(ValueError, match="unknown impl 'quick'"):
        DIAUnit(8, impl="quick")


@pytest.mark.parametrize("light", [False, True])
def test_identity_init_starts_as_the_identity_and_opens_to_the_paper_unit(light):
    torch.manual_seed(0)
    unit = DIAUnit(8, spatial_dims=3, light=light, identity_init=True)
    paper = DIAUnit(8, spatial_dims=3, light=light)
    paper.load_state_dict(unit.state_dict(), strict=False)
    assert sum(p.numel() for p in unit.parameters()) - sum(p.numel() for p in paper.parameters()) == 8
    x = torch.randn(2, 8, 4, 4, 4)
    y, state = unit(x)
    assert torch.equal(y, x)
    _, paper_state = paper(x)
    torch.testing.assert_close(state, paper_state)  # the LSTM state is the paper's either way
    with torch.no_grad():
        unit.gamma.fill_(1.0)
    torch.testing.assert_close(unit(x)[0], paper(x)[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("light", [False, True])
def test_fast_cell_gives_every_parameter_a_gradient_in_a_one_block_stage(light):
    """A stage of one block runs only the first step (h = c = 0): every weight still gets a
    gradient (zero for the hidden path), as in the reference, so weight decay treats them alike."""
    unit = DIAUnit(6, light=light)
    y, _ = unit(torch.randn(2, 6, 4, 4))
    y.sum().backward()
    assert all(p.grad is not None for p in unit.parameters())
