"""Tests of the DSM block (DSNet, section 4) against straightforward re-implementations.

The reference below follows the paper's equations in their written order: it applies
every 1x1 conv to the full map, forms Q, P and A explicitly and takes the softmax of A,
whereas the block pools before its value convs and drops the constant part of A. The two
must agree to float64 rounding.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medattn import blocks
from medattn.blocks.dsm import DSM, MODES

SPATIAL_SHAPES = {2: (3, 5), 3: (2, 3, 4)}


def _input(spatial_dims: int, channels: int = 6, batch: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, channels, *SPATIAL_SHAPES[spatial_dims])
    return torch.randn(shape, generator=generator, dtype=torch.float64)


def _block(
    channels: int = 6, spatial_dims: int = 2, seed: int = 1, jitter_gamma: bool = True, **kwargs
) -> DSM:
    """A float64 block whose parameters are all random, so that no term vanishes."""
    block = DSM(channels, spatial_dims=spatial_dims, **kwargs).double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in block.named_parameters():
            if name == "gamma" and not jitter_gamma:
                continue
            param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * 0.5)
    return block


# --- the straightforward reference ------------------------------------------------------


def _conv1x1(conv, maps: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv on (B, C_in, N) maps, written as the matrix product it is."""
    return torch.einsum("oc,bcn->bon", conv.weight.flatten(1), maps) + conv.bias[None, :, None]


def _ref_channel(block: DSM, x: torch.Tensor) -> torch.Tensor:
    """C = σ(Conv(Conv(X) × Softmax(Conv(X)))), section 4.1; returns (B, C, 1)."""
    maps = x.flatten(2)
    weights = torch.softmax(_conv1x1(block.channel_query, maps), dim=-1)  # (B, 1, N)
    values = _conv1x1(block.channel_value, maps)  # (B, r, N)
    context = values @ weights.transpose(1, 2)  # (B, r, 1)
    return torch.sigmoid(_conv1x1(block.channel_expand, context))


def _ref_spatial(block: DSM, x: torch.Tensor) -> torch.Tensor:
    """S = σ(Conv(X) × Softmax(MaxPool(Conv(X)))), section 4.1; returns (B, 1, N)."""
    maps = x.flatten(2)
    pooled = F.adaptive_max_pool1d(_conv1x1(block.spatial_query, maps), 1)  # (B, r, 1)
    weights = torch.softmax(pooled, dim=1)  # over the r channels
    values = _conv1x1(block.spatial_value, maps)  # (B, r, N)
    return torch.sigmoid(weights.transpose(1, 2) @ values)


def _ref_alpha(block: DSM, series: torch.Tensor, parallel: torch.Tensor) -> torch.Tensor:
    """SKNet selection on the two recoupled maps; returns α of shape (B, C, 1)."""
    squeezed = (series + parallel).mean(dim=-1)  # GAP of the fused map, (B, C)
    hidden = torch.relu(squeezed @ block.select_reduce.weight.T + block.select_reduce.bias)
    logits = (hidden @ block.select_expand.weight.T + block.select_expand.bias).view(-1, 2, block.channels)
    return torch.softmax(logits, dim=1)[:, 0, :, None]


def reference(block: DSM, x: torch.Tensor, alpha: float | None = None) -> torch.Tensor:
    """The paper's block in the paper's order (``alpha`` forces α; None uses the SK weight)."""
    maps = x.flatten(2)
    gamma = block.gamma[None, :, None] if block.gamma is not None else 1.0
    if block.mode in ("channel", "spatial"):
        gate = _ref_channel(block, x) if block.mode == "channel" else _ref_spatial(block, x)
        out = maps + gamma * (gate * maps - maps)
        return out.view_as(x)
    spatial = _ref_spatial(block, x)
    channel = _ref_channel(block, x) if block.mode != "parallel" else torch.zeros_like(maps[:, :, :1])
    series, parallel = channel * spatial, channel + spatial  # Q, P: (B, C, N)
    if alpha is None:
        alpha = {"series": 1.0, "parallel": 0.0}.get(block.mode)
    if alpha is None:
        alpha = _ref_alpha(block, series, parallel)
    attention = alpha * series + (1 - alpha) * parallel  # A
    self_attention = torch.softmax(attention, dim=-1)  # M, per channel over positions
    values = torch.sigmoid(_conv1x1(block.value_proj, maps))  # X'
    aggregated = (self_attention * values).sum(dim=-1, keepdim=True)  # F_aggr, (B, C, 1)
    return (maps + gamma * aggregated).view_as(x)


# --- behaviour per mode -------------------------------------------------------------------


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("identity_init", [True, False])
def test_matches_reference(mode, spatial_dims, identity_init):
    block = _block(spatial_dims=spatial_dims, mode=mode, rd_ratio=1 / 2, identity_init=identity_init)
    x = _input(spatial_dims)
    out = block(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out, reference(block, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_attention_maps_match_reference(spatial_dims):
    block = _block(spatial_dims=spatial_dims, rd_ratio=1 / 3)
    x = _input(spatial_dims)
    channel = block.channel_attention(x)
    spatial = block.spatial_attention(x)
    assert channel.shape == (2, 6) + (1,) * spatial_dims
    assert spatial.shape == (2, 1, *SPATIAL_SHAPES[spatial_dims])
    torch.testing.assert_close(channel.flatten(1), _ref_channel(block, x).flatten(1))
    torch.testing.assert_close(spatial.flatten(1), _ref_spatial(block, x).flatten(1))


def _loop_softmax(values: list[float]) -> list[float]:
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_channel_and_spatial_maps_against_loops():
    """Section 4.1 written with plain Python loops over a tiny 2D input."""
    block = _block(channels=3, spatial_dims=2, rd_channels=2)
    x = _input(2, channels=3, batch=1)
    pixels = x[0].flatten(1).tolist()  # [channel][position]
    n_pos, chans, rd = len(pixels[0]), 3, 2

    def conv(module, inputs, out_ch, n):
        w, b = module.weight.flatten(1).tolist(), module.bias.tolist()
        return [
            [b[o] + sum(w[o][c] * inputs[c][p] for c in range(len(inputs))) for p in range(n)]
            for o in range(out_ch)
        ]

    sigmoid = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    weights = _loop_softmax(conv(block.channel_query, pixels, 1, n_pos)[0])
    values = conv(block.channel_value, pixels, rd, n_pos)
    context = [[sum(values[r][p] * weights[p] for p in range(n_pos))] for r in range(rd)]
    expected_channel = [sigmoid(v[0]) for v in conv(block.channel_expand, context, chans, 1)]

    query = _loop_softmax([max(row) for row in conv(block.spatial_query, pixels, rd, n_pos)])
    values = conv(block.spatial_value, pixels, rd, n_pos)
    expected_spatial = [sigmoid(sum(query[r] * values[r][p] for r in range(rd))) for p in range(n_pos)]

    channel = block.channel_attention(x).flatten().tolist()
    spatial = block.spatial_attention(x).flatten().tolist()
    assert channel == pytest.approx(expected_channel, rel=1e-12)
    assert spatial == pytest.approx(expected_spatial, rel=1e-12)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_channel_mode_gates_each_channel_by_the_channel_map(spatial_dims):
    block = _block(spatial_dims=spatial_dims, mode="channel", identity_init=False)
    x = _input(spatial_dims)
    ratio = (block(x) / x).flatten(2)
    # One factor per (sample, channel), constant over positions, and equal to C.
    torch.testing.assert_close(ratio, ratio[..., :1].expand_as(ratio))
    torch.testing.assert_close(ratio[..., 0], block.channel_attention(x).flatten(1))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_spatial_mode_gates_each_position_by_the_spatial_map(spatial_dims):
    block = _block(spatial_dims=spatial_dims, mode="spatial", identity_init=False)
    x = _input(spatial_dims)
    ratio = block(x) / x
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))
    torch.testing.assert_close(ratio[:, :1], block.spatial_attention(x))


def _forced_alpha(block: DSM, branch: int) -> DSM:
    """Make the selection choose Q (branch 0, α = 1) or P (branch 1, α = 0) exactly."""
    with torch.no_grad():
        block.select_expand.weight.zero_()
        logits = torch.full((2, block.channels), -50.0, dtype=torch.float64)
        logits[branch] = 50.0
        block.select_expand.bias.copy_(logits.flatten())
    return block


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize(("mode", "branch", "alpha"), [("series", 0, 1.0), ("parallel", 1, 0.0)])
def test_series_and_parallel_equal_full_with_alpha_forced(mode, branch, alpha, spatial_dims):
    full = _forced_alpha(_block(spatial_dims=spatial_dims, rd_ratio=1 / 2), branch)
    ablated = DSM(6, spatial_dims=spatial_dims, mode=mode, rd_ratio=1 / 2).double()
    own_keys = ablated.state_dict().keys()
    ablated.load_state_dict({k: v for k, v in full.state_dict().items() if k in own_keys})
    x = _input(spatial_dims)
    torch.testing.assert_close(ablated(x), full(x), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(full(x), reference(full, x, alpha=alpha), rtol=1e-10, atol=1e-12)


def test_full_mode_differs_from_its_ablations():
    full = _block(rd_ratio=1 / 2)
    x = _input(2)
    out = full(x)
    for mode in ("series", "parallel"):
        ablated = DSM(6, mode=mode, rd_ratio=1 / 2).double()
        ablated.load_state_dict({k: v for k, v in full.state_dict().items() if k in ablated.state_dict()})
        assert not torch.allclose(ablated(x), out, rtol=1e-6, atol=1e-9), mode


def test_parallel_mode_ignores_the_channel_map():
    """softmax_N(C_c + S) = softmax_N(S): the parallel output cannot depend on C."""
    block = _block(mode="full")
    x = _input(2)
    spatial = _ref_spatial(block, x)
    for channel in (torch.zeros(2, 6, 1), torch.rand(2, 6, 1, generator=torch.Generator().manual_seed(3))):
        shifted = torch.softmax(channel.double() + spatial, dim=-1)
        torch.testing.assert_close(shifted, torch.softmax(spatial, dim=-1).expand_as(shifted))
    assert not any(name.startswith("channel_") for name, _ in DSM(6, mode="parallel").named_parameters())


def test_self_attention_sums_to_one_per_channel():
    """F_aggr of a constant value map returns that constant: M is a distribution per channel."""
    block = _block(rd_ratio=1 / 2, identity_init=False)
    with torch.no_grad():
        block.value_proj.weight.zero_()
        block.value_proj.bias.copy_(torch.linspace(-2, 2, 6, dtype=torch.float64))
    x = _input(2)
    added = (block(x) - x).flatten(2)
    torch.testing.assert_close(added, torch.sigmoid(block.value_proj.bias)[None, :, None].expand_as(added))


# --- identity at initialisation -----------------------------------------------------------


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("mode", MODES)
def test_identity_at_init(mode, spatial_dims):
    x = _input(spatial_dims).float()
    block = DSM(6, spatial_dims=spatial_dims, mode=mode)
    assert torch.equal(block(x), x)
    # Still exact with every other parameter random: only γ = 0 makes it the identity.
    jittered = _block(spatial_dims=spatial_dims, mode=mode, jitter_gamma=False)
    assert torch.equal(jittered(x.double()), x.double())
    with torch.no_grad():
        jittered.gamma.fill_(0.1)
    assert not torch.allclose(jittered(x.double()), x.double())


@pytest.mark.parametrize("mode", MODES)
def test_without_identity_init_gamma_one_is_the_paper_block(mode):
    plain = _block(mode=mode, identity_init=False)
    scaled = DSM(6, mode=mode).double()
    scaled.load_state_dict({**plain.state_dict(), "gamma": torch.ones(6, dtype=torch.float64)})
    assert plain.gamma is None and "gamma" not in plain.state_dict()
    x = _input(2)
    torch.testing.assert_close(scaled(x), plain(x), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(plain(x), x)


# --- parameters, shapes, dtypes ---------------------------------------------------------


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


#: conv1 / conv2 widths of ResNet-50's 16 bottlenecks (torchvision: 3, 4, 6, 3 blocks).
RESNET50_WIDTHS = [64] * 3 + [128] * 4 + [256] * 6 + [512] * 3


def test_parameters_of_dsnet50_a_match_the_paper():
    """DSNet Table 4: DSNet50-A = DSM r = 2 after conv2 of stage 4's three bottlenecks (512
    channels); Tables 5, 6, 8 give +3.54, +3.55 and +3.552 M over ResNet-50 (Table 7 swaps
    the A and B rows)."""
    added = 3 * _count(DSM(512, spatial_dims=2, rd_ratio=1 / 2))
    assert added == pytest.approx(3.55e6, rel=0.01)


def test_parameters_of_dsnet50_b_match_the_paper_without_sknets_width_floor():
    """DSNet50-B = DSM r = 16 after conv1 of all 16 bottlenecks: +1.81, +1.82, +1.815 M
    (Tables 5, 6, 8). The paper's count has the selection FC at width r; medattn's default
    keeps SKNet's floor L = 32 (``sk_min_width``, a documented decision), which is more."""
    paper_width = sum(_count(DSM(c, spatial_dims=2, rd_ratio=1 / 16, sk_min_width=0)) for c in RESNET50_WIDTHS)
    assert paper_width == pytest.approx(1.815e6, rel=0.015)
    default = sum(_count(DSM(c, spatial_dims=2, rd_ratio=1 / 16)) for c in RESNET50_WIDTHS)
    assert paper_width < default < 1.1 * paper_width


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("channels", "rd_ratio"), [(64, 1 / 16), (30, 1 / 2), (5, 1 / 16), (96, 1 / 2)])
def test_identity_init_adds_one_scale_per_channel_and_ablations_drop_branches(mode, channels, rd_ratio):
    with_gamma = DSM(channels, spatial_dims=3, mode=mode, rd_ratio=rd_ratio)
    without = DSM(channels, spatial_dims=3, mode=mode, rd_ratio=rd_ratio, identity_init=False)
    assert _count(with_gamma) - _count(without) == channels
    assert with_gamma.rd_channels == max(2, round(channels * rd_ratio))
    if mode != "full":  # Table 3's ablations remove branches of the full block, never add any
        assert _count(without) < _count(DSM(channels, spatial_dims=3, rd_ratio=rd_ratio, identity_init=False))


def test_rd_channels_and_divisor():
    assert DSM(64, rd_channels=7).rd_channels == 7
    assert DSM(64, rd_ratio=1 / 16, rd_divisor=8).rd_channels == 8
    assert DSM(48, rd_ratio=1 / 2, rd_divisor=16).rd_channels == 32  # 24 rounds up to 32


def test_spatial_query_is_never_a_single_channel():
    """With r = 1 the softmax over the pooled query channels would be constant (= 1)."""
    block = DSM(16, spatial_dims=3)  # 16 / 16 = 1, raised to 2
    assert block.rd_channels == 2
    with torch.no_grad():
        block.gamma.fill_(1.0)
    x = torch.randn(1, 16, 3, 4, 5, generator=torch.Generator().manual_seed(6))
    (block(x) * torch.randn(x.shape, generator=torch.Generator().manual_seed(7))).sum().backward()
    assert block.spatial_query.weight.grad.abs().sum() > 0
    for mode in ("full", "series", "parallel", "spatial"):
        with pytest.raises(ValueError, match="rd_channels must be at least 2"):
            DSM(16, mode=mode, rd_channels=1)
    assert DSM(16, mode="channel", rd_channels=1).rd_channels == 1


@pytest.mark.parametrize("seed", range(5))
def test_selection_starts_with_live_units(seed):
    """The selection FC's input is positive, so a narrow ReLU layer can start all dead."""
    torch.manual_seed(seed)
    block = DSM(16, spatial_dims=3, rd_ratio=1 / 8)  # r = 2, selection width 32
    assert block.select_reduce.out_features == 32
    with torch.no_grad():
        block.gamma.fill_(1.0)
    x = torch.randn(2, 16, 3, 4, 5, generator=torch.Generator().manual_seed(seed))
    (block(x) * torch.randn(x.shape, generator=torch.Generator().manual_seed(9))).sum().backward()
    assert block.select_reduce.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_3d_block_on_a_single_slice_equals_2d_block(spatial_dims):
    """One class for 2D and 3D: a depth-1 volume behaves like the 2D image."""
    block2d = _block(spatial_dims=2, rd_ratio=1 / 2)
    block3d = DSM(6, spatial_dims=3, rd_ratio=1 / 2).double()
    state = {k: v.unsqueeze(2) if v.ndim == 4 else v for k, v in block2d.state_dict().items()}
    block3d.load_state_dict(state)
    x = _input(2)
    torch.testing.assert_close(block3d(x.unsqueeze(2)).squeeze(2), block2d(x))


@pytest.mark.parametrize("mode", MODES)
def test_gradients_match_finite_differences(mode):
    block = _block(channels=4, spatial_dims=2, mode=mode, rd_channels=2)
    x = _input(2, channels=4, batch=1).requires_grad_()
    names = [name for name, _ in block.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in block.parameters()]

    def run(inputs, *values):
        return torch.func.functional_call(block, dict(zip(names, values)), (inputs,))

    assert torch.autograd.gradcheck(run, (x, *params), fast_mode=True)


@pytest.mark.parametrize("mode", MODES)
def test_bf16_autocast_close_to_fp32(mode):
    block = _block(channels=16, spatial_dims=3, mode=mode, rd_ratio=1 / 2).float()
    x = torch.randn(2, 16, 4, 6, 5, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        residual = block(x) - x
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = block(x)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    # Compared on the part the block adds, which is much smaller than x itself.
    assert (out - x - residual).abs().max() <= 2e-2 * residual.abs().max()


def test_large_inputs_stay_finite():
    block = _block(channels=8, spatial_dims=3, rd_ratio=1 / 2).float()
    x = torch.randn(1, 8, 5, 6, 7, generator=torch.Generator().manual_seed(5)) * 1e4
    assert torch.isfinite(block(x)).all()


def test_registered_and_created_through_registry():
    assert "dsm" in blocks.available()
    block = blocks.create("dsm", 32, spatial_dims=3, rd_ratio=1 / 2, mode="series")
    assert isinstance(block, DSM) and block.mode == "series" and block.rd_channels == 16
    with pytest.raises(ValueError, match="unknown argument"):
        blocks.create("dsm", 32, ratio=2)


# --- argument checking ----------------------------------------------------------------------


@pytest.mark.parametrize("rd_ratio", [0, -0.5, 1.5, 16, 2, float("nan"), float("inf"), "1/16", None, True])
def test_rd_ratio_validation(rd_ratio):
    with pytest.raises(ValueError, match="rd_ratio") as info:
        DSM(32, rd_ratio=rd_ratio)
    assert repr(rd_ratio) in str(info.value)


@pytest.mark.parametrize("rd_channels", [0, -3, 2.5, True, "8"])
def test_rd_channels_validation(rd_channels):
    with pytest.raises(ValueError, match="rd_channels") as info:
        DSM(32, rd_channels=rd_channels)
    assert repr(rd_channels) in str(info.value)


@pytest.mark.parametrize("mode", ["Full", "both", "", None, "2d"])
def test_mode_validation_lists_choices(mode):
    with pytest.raises(ValueError, match="mode") as info:
        DSM(32, mode=mode)
    assert repr(mode) in str(info.value) and all(name in str(info.value) for name in MODES)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"spatial_dims": 4}, "spatial_dims"),
    ({"spatial_dims": 1}, "spatial_dims"),
    ({"rd_divisor": 0}, "rd_divisor"),
    ({"act_layer": "nonsense"}, "activation"),
    ({"gate_layer": "nonsense"}, "activation"),
])
def test_other_argument_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DSM(32, **kwargs)


@pytest.mark.parametrize("channels", [0, -4, 2.0, True])
def test_channels_validation(channels):
    with pytest.raises(ValueError, match="channels"):
        DSM(channels)


def test_input_shape_validation():
    block = DSM(8, spatial_dims=3)
    with pytest.raises(ValueError, match=r"C=8, got shape \(1, 8, 4, 4\)"):
        block(torch.zeros(1, 8, 4, 4))
    with pytest.raises(ValueError, match=r"got shape \(1, 6, 2, 4, 4\)"):
        block(torch.zeros(1, 6, 2, 4, 4))
    with pytest.raises(ValueError, match="no channel branch"):
        DSM(8, mode="spatial").channel_attention(torch.zeros(1, 8, 4, 4))
    with pytest.raises(ValueError, match="no spatial branch"):
        DSM(8, mode="channel").spatial_attention(torch.zeros(1, 8, 4, 4))


# ----------------------------------------------------------------------------- fast path vs the reference


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("gate_layer", ["sigmoid", "tanh"])
def test_fast_block_equals_the_reference(mode, spatial_dims, gate_layer):
    """Outputs and the gradients of the input and of every parameter, float32, 1e-5. The
    paper's block (no gamma) and a tanh gate (signed temperatures: the shift's other
    branch) are included."""
    import copy

    torch.manual_seed(len(mode) + spatial_dims)
    fast = DSM(24, spatial_dims=spatial_dims, mode=mode, rd_ratio=1 / 4, identity_init=False, gate_layer=gate_layer)
    reference = copy.deepcopy(fast)
    reference.impl = "reference"
    x = torch.randn(2, 24, *([6] * spatial_dims), requires_grad=True)
    out_fast, out_reference = fast(x), reference(x)
    torch.testing.assert_close(out_fast, out_reference, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(out_fast)
    grads_fast = torch.autograd.grad((out_fast * grad).sum(), [x, *fast.parameters()])
    grads_reference = torch.autograd.grad((out_reference * grad).sum(), [x, *reference.parameters()])
    for ours, theirs in zip(grads_fast, grads_reference):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_softmax_pool_survives_large_temperatures():
    from medattn.blocks.dsm import _softmax_pool

    temperature = torch.tensor([[300.0, -300.0]])
    spatial = torch.tensor([[0.0, 1.0, 0.5]])
    values = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]])
    reference = (torch.softmax(temperature[:, :, None] * spatial[:, None, :], -1) * values).sum(-1)
    torch.testing.assert_close(_softmax_pool(temperature, spatial, values), reference)
    assert torch.isfinite(_softmax_pool(temperature, spatial, values)).all()


def test_unknown_impl_is_refused():
    with pytest.raises(ValueError, match="unknown impl 'quick'"):
        DSM(8, impl="quick")
