"""SE, ECA, CBAM and GC against timm 1.0.22 (2D) and against timm through exact 2D/3D
identities (3D): depth-1 inputs, global pooling over a flattened depth axis, and per-slice
spatial attention with a kernel confined to the centre depth slice."""

from __future__ import annotations

import pytest
import torch

from medattn import blocks
from medattn.blocks.classic import CBAMBlock, ECABlock, GCBlock, SEBlock, eca_kernel_size

TOL = dict(atol=1e-5, rtol=1e-5)

# (our class, timm class name, keyword arguments both accept)
CASES = [
    pytest.param(SEBlock, "SEModule", {}, id="se"),
    pytest.param(SEBlock, "SEModule", dict(rd_ratio=0.25, rd_divisor=4, add_maxpool=True), id="se-maxpool"),
    pytest.param(SEBlock, "SEModule", dict(rd_channels=5, bias=False, act_layer="silu"), id="se-nobias-silu"),
    pytest.param(ECABlock, "EcaModule", {}, id="eca"),
    pytest.param(ECABlock, "EcaModule", dict(gamma=1, beta=2), id="eca-gamma1"),
    pytest.param(CBAMBlock, "CbamModule", {}, id="cbam"),
    pytest.param(CBAMBlock, "CbamModule", dict(rd_ratio=0.5, spatial_kernel_size=3, mlp_bias=True), id="cbam-k3"),
    pytest.param(GCBlock, "GlobalContext", {}, id="gc-scale"),
    pytest.param(GCBlock, "GlobalContext", dict(fuse_add=True, fuse_scale=False), id="gc-add"),
    pytest.param(GCBlock, "GlobalContext", dict(fuse_add=True, use_attn=False, rd_ratio=0.25), id="gc-both-avg"),
]


@pytest.fixture(scope="module")
def timm_layers():
    """timm's layer classes by name (imported here: timm is slow to import)."""
    import timm.layers
    import timm.layers.cbam

    return {
        "SEModule": timm.layers.SEModule,
        "EcaModule": timm.layers.EcaModule,
        "CbamModule": timm.layers.cbam.CbamModule,
        "GlobalContext": timm.layers.GlobalContext,
    }


def _randomize_(module: torch.nn.Module, seed: int) -> None:
    """Random values for every parameter and BN statistic, zero-initialised layers included."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=gen)
            if tensor.ndim > 1:  # weights: keep fan-in scaled so logits stay O(1)
                tensor.copy_(noise / tensor[0].numel() ** 0.5)
            else:  # biases, norm affine parameters, BN running means
                tensor.copy_(0.3 * noise)
        for name, buffer in module.named_buffers():
            if name.endswith("running_var"):
                buffer.copy_(0.5 + torch.rand(buffer.shape, generator=gen))


def _inflate(state_dict: dict) -> dict:
    """2D conv weights (O, I, kh, kw) -> 3D (O, I, kh, kh, kw), the 2D kernel in the centre
    depth slice and zeros elsewhere; 1D (ECA) and non-conv tensors are unchanged."""
    out = {}
    for key, value in state_dict.items():
        if value.ndim == 4:
            depth = value.shape[2]
            inflated = value.new_zeros(value.shape[:2] + (depth,) + value.shape[2:])
            inflated[:, :, depth // 2] = value
            value = inflated
        out[key] = value
    return out


def _pair(ours_cls, timm_cls, channels, kwargs, seed=0):
    reference = timm_cls(channels, **kwargs)
    _randomize_(reference, seed)
    ours = ours_cls(channels, **kwargs)
    ours.load_state_dict(reference.state_dict())
    return ours, reference


@pytest.mark.parametrize("ours_cls, timm_name, kwargs", CASES)
@pytest.mark.parametrize("channels, shape", [(16, (2, 9, 13)), (64, (1, 8, 8)), (200, (3, 5, 11))])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_2d_matches_timm(timm_layers, ours_cls, timm_name, kwargs, channels, shape, train):
    ours, reference = _pair(ours_cls, timm_layers[timm_name], channels, kwargs, seed=channels)
    ours.train(train)
    reference.train(train)
    x = torch.randn(shape[0], channels, *shape[1:], generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours(x), reference(x), **TOL)


@pytest.mark.parametrize("ours_cls, timm_name, kwargs", CASES)
def test_state_dict_loads_into_timm(timm_layers, ours_cls, timm_name, kwargs):
    ours = ours_cls(24, **kwargs)
    _randomize_(ours, seed=3)
    reference = timm_layers[timm_name](24, **kwargs)
    # GCBlock has no softmax-logit bias; whatever timm keeps there must not matter.
    incompatible = reference.load_state_dict(ours.state_dict(), strict=False)
    expected_missing = ["conv_attn.bias"] if getattr(ours, "conv_attn", None) is not None else []
    assert incompatible.missing_keys == expected_missing
    assert incompatible.unexpected_keys == []
    with torch.no_grad():
        for key in expected_missing:
            reference.get_parameter(key).fill_(3.7)
    x = torch.randn(2, 24, 7, 10, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(ours.eval()(x), reference.eval()(x), **TOL)


@pytest.mark.parametrize("ours_cls, timm_name, kwargs", CASES)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_3d_depth_one_equals_2d(timm_layers, ours_cls, timm_name, kwargs, train):
    ours_2d, reference = _pair(ours_cls, timm_layers[timm_name], 32, kwargs, seed=5)
    ours_3d = ours_cls(32, spatial_dims=3, **kwargs)
    ours_3d.load_state_dict(_inflate(reference.state_dict()))
    for module in (ours_2d, ours_3d, reference):
        module.train(train)
    x = torch.randn(2, 32, 6, 9, generator=torch.Generator().manual_seed(6))
    expected = reference(x)
    torch.testing.assert_close(ours_2d(x), expected, **TOL)
    torch.testing.assert_close(ours_3d(x.unsqueeze(2)).squeeze(2), expected, **TOL)


@pytest.mark.parametrize(
    "ours_cls, timm_name, kwargs",
    [case for case in CASES if case.values[0] is not CBAMBlock],
)
def test_3d_global_pooling_blocks_equal_2d_on_flattened_depth(timm_layers, ours_cls, timm_name, kwargs):
    """SE, ECA and GC pool over all positions and act pointwise, so a (D, H, W) volume
    behaves as a (D*H, W) image: a reference for depth > 1."""
    ours_3d = ours_cls(20, spatial_dims=3, **kwargs)
    reference = timm_layers[timm_name](20, **kwargs)
    _randomize_(reference, seed=7)
    ours_3d.load_state_dict(_inflate(reference.state_dict()))
    x = torch.randn(2, 20, 5, 4, 7, generator=torch.Generator().manual_seed(8))
    expected = reference.eval()(x.reshape(2, 20, 20, 7)).reshape(x.shape)
    torch.testing.assert_close(ours_3d.eval()(x), expected, **TOL)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_3d_cbam_with_centre_slice_kernel_equals_2d_per_slice(timm_layers, train):
    """Channel attention sees the whole volume (flattened-depth reference); spatial attention
    with a kernel confined to the centre depth slice acts on each slice separately, and BN
    statistics over (B, D, H, W) equal those over a batch of B*D slices."""
    reference = timm_layers["CbamModule"](24)
    _randomize_(reference, seed=11)
    ours = CBAMBlock(24, spatial_dims=3).train(train)
    ours.load_state_dict(_inflate(reference.state_dict()))
    reference.train(train)
    x = torch.randn(2, 24, 5, 6, 7, generator=torch.Generator().manual_seed(12))
    batch, channels, depth, height, width = x.shape
    after_channel = reference.channel(x.reshape(batch, channels, depth * height, width)).reshape(x.shape)
    slices = after_channel.transpose(1, 2).reshape(batch * depth, channels, height, width)
    expected = reference.spatial(slices).reshape(batch, depth, channels, height, width).transpose(1, 2)
    torch.testing.assert_close(ours(x), expected, **TOL)


@pytest.mark.parametrize("name", ["se", "eca", "cbam", "gc"])
def test_3d_axes_are_treated_alike(name):
    """Swapping two spatial axes of the input (and of CBAM's full 3D kernel) swaps them in
    the output: no axis is special-cased."""
    block = blocks.create(name, 16, spatial_dims=3).eval()
    _randomize_(block, seed=13)
    swapped = blocks.create(name, 16, spatial_dims=3).eval()
    state = {
        key: value.transpose(2, 4) if value.ndim == 5 else value for key, value in block.state_dict().items()
    }
    swapped.load_state_dict(state)
    x = torch.randn(2, 16, 4, 5, 6, generator=torch.Generator().manual_seed(14))
    torch.testing.assert_close(swapped(x.transpose(2, 4)), block(x).transpose(2, 4), **TOL)


@pytest.mark.parametrize("name", ["se", "eca", "cbam", "gc"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_shape_and_gradients(name, spatial_dims):
    # 32 channels: with fewer, CBAM's 1/16 bottleneck has one ReLU unit, which random
    # weights can leave dead (a true zero gradient, not a bug).
    block = blocks.create(name, 32, spatial_dims=spatial_dims).train()
    _randomize_(block, seed=17)
    shape = (2, 32, *(5, 7, 3)[:spatial_dims])
    x = torch.randn(shape, generator=torch.Generator().manual_seed(17)).requires_grad_()
    out = block(x)
    assert out.shape == x.shape
    out.square().sum().backward()
    assert x.grad.abs().sum() > 0
    for param_name, param in block.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, param_name


@pytest.mark.parametrize("gamma, beta", [(2, 1), (3, 2), (1.5, 0)])
def test_eca_kernel_size_matches_timm(timm_layers, gamma, beta):
    for channels in range(1, 1025):
        expected = timm_layers["EcaModule"](channels, gamma=gamma, beta=beta).conv.kernel_size[0]
        assert eca_kernel_size(channels, gamma, beta) == expected, channels
    assert ECABlock(channels, gamma=gamma, beta=beta).conv.kernel_size[0] == expected


def test_eca_explicit_kernel_size_overrides_adaptive():
    assert ECABlock(64, kernel_size=9).conv.kernel_size == (9,)
    assert ECABlock(64).conv.kernel_size == (eca_kernel_size(64),)


@pytest.mark.parametrize("fuse_add, fuse_scale", [(True, False), (False, True), (True, True)])
def test_gc_zero_init_of_last_layers(fuse_add, fuse_scale):
    """GCNet's init: the last conv of each fusion branch starts at zero, so an additive block
    starts as the identity and a scaling one as a constant gate of 1/2."""
    block = GCBlock(16, fuse_add=fuse_add, fuse_scale=fuse_scale)
    for branch in (block.mlp_add, block.mlp_scale):
        if branch is not None:
            assert not branch.fc2.weight.any() and not branch.fc2.bias.any()
    x = torch.randn(2, 16, 6, 5, generator=torch.Generator().manual_seed(16))
    torch.testing.assert_close(block(x), x * (0.5 if fuse_scale else 1.0))
    plain = GCBlock(16, fuse_add=fuse_add, fuse_scale=fuse_scale, init_last_zero=False)
    branches = [b for b in (plain.mlp_add, plain.mlp_scale) if b is not None]
    assert all(b.fc2.weight.any() for b in branches)


def test_gc_drops_timm_attention_bias_exactly(timm_layers):
    """timm's conv_attn.bias loads strictly and changes nothing: softmax cancels it."""
    reference = timm_layers["GlobalContext"](16, fuse_add=True)
    _randomize_(reference, seed=19)
    with torch.no_grad():
        reference.conv_attn.bias.fill_(-5.0)
    ours = GCBlock(16, fuse_add=True)
    ours.load_state_dict(reference.state_dict(), strict=True)
    assert "conv_attn.bias" not in ours.state_dict()
    x = torch.randn(2, 16, 7, 3, generator=torch.Generator().manual_seed(20))
    torch.testing.assert_close(ours(x), reference(x), **TOL)


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("se", dict(spatial_dims=1), "spatial_dims"),
        ("se", dict(rd_ratio=0.0), "rd_ratio"),
        ("se", dict(rd_channels=0), "rd_channels"),
        ("se", dict(act_layer="relu6"), "relu6"),
        ("eca", dict(kernel_size=4), "kernel_size"),
        ("eca", dict(gamma=0), "gamma"),
        ("cbam", dict(spatial_kernel_size=6), "spatial_kernel_size"),
        ("cbam", dict(mlp_bias="yes"), "mlp_bias"),
        ("gc", dict(fuse_add=False, fuse_scale=False), "fuse_add"),
        ("gc", dict(rd_ratio=2.0), "rd_ratio"),
    ],
)
def test_bad_arguments_raise_value_error(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        blocks.create(name, 32, **kwargs)


@pytest.mark.parametrize("name", ["se", "eca", "cbam", "gc"])
@pytest.mark.parametrize("shape", [(2, 8, 5, 5), (2, 16, 5, 5, 5), (2, 16, 5)])
def test_wrong_input_shape_raises_value_error(name, shape):
    block = blocks.create(name, 16, spatial_dims=2)
    with pytest.raises(ValueError, match=r"got shape \(2, "):
        block(torch.randn(shape))


def test_registered_names():
    assert {"se", "eca", "cbam", "gc"} <= set(blocks.available())
    assert blocks.get_block_class("GC") is GCBlock
