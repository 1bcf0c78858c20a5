"""medattn.networks.create: MONAI's networks with blocks in their encoder stages."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medattn import blocks, insertion, placement
from medattn.networks import builders
from medattn.networks.builders import create, dynunet_layout, encoder_stages
from medattn.networks.training import deep_supervision_loss

NETWORKS = ("dynunet", "segresnet", "basicunet")
#: Every per-feature-map block plus every DIA unit, in their one spelling.
ATTENTIONS = placement.block_names()
DIA_UNITS = set(placement.DIA_UNITS)
#: Input size per network; BasicUNet pools four times and instance-normalises its 1/16 map,
#: which needs more than one voxel, hence one axis of 32.
SIZE = {"dynunet": 16, "segresnet": 16, "basicunet": 16}
FIRST_AXIS = {"dynunet": 16, "segresnet": 16, "basicunet": 32}


def tiny_kwargs(name: str, spatial_dims: int) -> dict:
    """Small MONAI constructor arguments, so that the 2 x 3 x |blocks| matrix stays fast."""
    return {
        "dynunet": {"filters": [4, 8, 16], "patch_size": [SIZE["dynunet"]] * spatial_dims},
        "segresnet": {"init_filters": 8, "blocks_down": (1, 2, 2), "blocks_up": (1, 1)},
        "basicunet": {"features": (4, 4, 8, 8, 16, 4)},
    }[name]


def tiny(name: str, spatial_dims: int = 3, attention=None, **kwargs) -> nn.Module:
    return create(name, spatial_dims, 1, 3, attention=attention, **tiny_kwargs(name, spatial_dims), **kwargs)


def make_input(name: str, spatial_dims: int, batch: int = 1) -> torch.Tensor:
    shape = [FIRST_AXIS[name]] + [SIZE[name]] * (spatial_dims - 1)
    return torch.randn(batch, 1, *shape, generator=torch.Generator().manual_seed(0))


def plain_twin(network: nn.Module) -> nn.Module:
    """The same MONAI network without attention, carrying the stock weights of ``network``."""
    config = network.medattn_config
    plain = create(config["name"], config["spatial_dims"], config["in_channels"], config["out_channels"],
                   **config["network_kwargs"])
    result = plain.load_state_dict(network.state_dict(), strict=False)
    assert not result.missing_keys
    return plain


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("name", NETWORKS)
def test_forward_backward(name, attention, spatial_dims):
    """Training step with MONAI's DiceCELoss (over DynUNet's deep-supervision heads)."""
    from monai.losses import DiceCELoss

    torch.manual_seed(0)
    network = tiny(name, spatial_dims, attention)
    attached = insertion.attached_blocks(network)
    stages = encoder_stages(network)
    position = network.medattn_config["attention"].split("@")[1]
    hosts = [b for stage in stages for b in stage.blocks if position in b]
    assert len(attached) == (len(stages) if attention in DIA_UNITS else len(hosts))
    calls = []
    for block in attached.values():
        block.register_forward_hook(lambda module, args, output: calls.append(module))
    x = make_input(name, spatial_dims)
    output = network(x)
    n_layers = sum(len(stage.unit_hosts) for stage in stages)
    assert len(calls) == (n_layers if attention in DIA_UNITS else len(attached))

    expected = (1, 3, *x.shape[2:])
    if name == "dynunet":  # training mode with deep supervision: heads stacked on dim 1
        expected = (1, 1 + network.deep_supr_num, 3, *x.shape[2:])
    assert tuple(output.shape) == expected
    assert torch.isfinite(output).all()
    labels = torch.randint(0, 3, (1, 1, *x.shape[2:]), generator=torch.Generator().manual_seed(1)).float()
    deep_supervision_loss(output, labels, DiceCELoss(to_onehot_y=True, softmax=True)).backward()
    for block_name, block in attached.items():
        for param_name, param in block.named_parameters():
            assert param.grad is not None, f"{block_name}.{param_name} got no gradient"
            assert torch.isfinite(param.grad).all()


@pytest.mark.parametrize("name", NETWORKS)
def test_plain_network_is_monais_own(name):
    from monai.networks import nets

    network = tiny(name)
    cls = {"dynunet": nets.DynUNet, "segresnet": nets.SegResNet, "basicunet": nets.BasicUNet}[name]
    assert type(network) is cls
    kwargs = dict(network.medattn_config["network_kwargs"])
    reference = cls(spatial_dims=3, in_channels=1, out_channels=3, **kwargs)
    reference.load_state_dict(network.state_dict())  # strict: identical keys and shapes
    network.eval(), reference.eval()
    x = make_input(name, 3)
    torch.testing.assert_close(network(x), reference(x))
    assert insertion.attached_blocks(network) == {}


@pytest.mark.parametrize("attention", ["se", "dia"])
@pytest.mark.parametrize("name", NETWORKS)
def test_stock_keys_unchanged_and_stock_weights_load(name, attention):
    network = tiny(name, attention=attention)
    plain = tiny(name)
    stock, extended = set(plain.state_dict()), set(network.state_dict())
    assert stock <= extended
    result = network.load_state_dict(plain.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert set(result.missing_keys) == extended - stock
    marker = ".dia." if attention == "dia" else ".attention."
    assert all(marker in key for key in result.missing_keys)


class _Spy(nn.Module):
    """Identity block that records what it receives."""

    def __init__(self, channels, spatial_dims=2, **kwargs):
        super().__init__()
        self.channels = channels
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return x


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", NETWORKS)
def test_blocks_receive_each_encoder_stage_output(name, spatial_dims, monkeypatch):
    """Each block sees exactly the output of the MONAI module the docs call that stage."""
    monkeypatch.setattr(blocks, "create", lambda block, channels, spatial_dims=2, **kw: _Spy(channels))
    network = tiny(name, spatial_dims, attention="se@stage").eval()
    plain = plain_twin(network).eval()
    reference = {}
    for stage in encoder_stages(plain):
        stage.module.register_forward_hook(lambda m, a, out, key=stage.name: reference.setdefault(key, out.clone()))
    x = make_input(name, spatial_dims)
    with torch.no_grad():
        torch.testing.assert_close(network(x), plain(x))  # identity blocks change nothing
    stages = encoder_stages(network)
    assert [s.name for s in stages] == list(reference)
    for stage in stages:
        spy = insertion.hook_host(stage.module).attention
        assert spy.channels == stage.channels == reference[stage.name].shape[1]
        assert len(spy.seen) == 1
        torch.testing.assert_close(spy.seen[0], reference[stage.name])


class _SpyUnit(nn.Module):
    """DIA-protocol unit that records the state it is handed and returns a step counter."""

    def __init__(self, log, stage_channels):
        super().__init__()
        self.log, self.channels = log, stage_channels

    def forward(self, x, state=None):
        self.log.append((self.channels, state))
        return x, (0 if state is None else state + 1)


@pytest.mark.parametrize("name", NETWORKS)
def test_dia_unit_state_threads_through_the_layers_of_each_stage(name, monkeypatch):
    from medattn.blocks import dia

    log = []
    monkeypatch.setattr(dia, "create_unit", lambda kind, channels, spatial_dims=2, num_blocks=None, **kw: _SpyUnit(log, channels))
    network = tiny(name, attention="dia")
    x = make_input(name, 3)
    stages = encoder_stages(network)
    expected = []
    for stage in stages:
        expected += [(stage.channels, None if step == 0 else step - 1) for step in range(len(stage.unit_hosts))]
    for _ in range(2):  # the state must restart on every forward call
        log.clear()
        network(x)
        assert log == expected


def test_placement_stages_select_stages():
    assert len(insertion.attached_blocks(tiny("segresnet", attention="se@stage:last"))) == 1
    network = tiny("dynunet", attention="se@stage:0,-1")
    assert sorted(insertion.attached_blocks(network)) == ["bottleneck.attention", "input_block.attention"]
    with pytest.raises(ValueError, match="out of range"):
        tiny("dynunet", attention="se:7")


#: Where a bare block name sits, written from the module docstring's table (not from the
#: adapter): the MONAI module whose output the block receives, per stage.
DEFAULT_HOSTS = {
    ("dynunet", "se"): ["input_block.norm2", "downsamples.0.norm2", "bottleneck.norm2"],
    ("dynunet", "dsm"): ["input_block.norm2", "downsamples.0.norm2", "bottleneck.norm2"],
    ("basicunet", "se"): ["conv_0.conv_1.adn.N"] + [f"down_{i}.convs.conv_1.adn.N" for i in range(1, 5)],
    ("segresnet", "se"): ["down_layers.0.1.conv2", "down_layers.1.1.conv2", "down_layers.1.2.conv2",
                          "down_layers.2.1.conv2", "down_layers.2.2.conv2"],
    ("segresnet", "dsm"): ["down_layers.0.1.norm2", "down_layers.1.1.norm2", "down_layers.1.2.norm2",
                           "down_layers.2.1.norm2", "down_layers.2.2.norm2"],
}


@pytest.mark.parametrize(("name", "block"), sorted(DEFAULT_HOSTS))
def test_default_positions_receive_the_documented_modules_outputs(name, block, monkeypatch):
    """A bare block name sits after the documented norm (or residual branch end), before
    the nonlinearity: each block sees exactly that module's output of the plain network."""
    monkeypatch.setattr(blocks, "create", lambda block, channels, spatial_dims=2, **kw: _Spy(channels))
    network = tiny(name, 3, attention=block).eval()
    plain = plain_twin(network).eval()
    modules = dict(plain.named_modules())
    reference = {}
    for host in DEFAULT_HOSTS[(name, block)]:
        # The hook must return None: a returned value would replace the module's output,
        # and the in-place activation that follows would then change the recorded copy.
        modules[host].register_forward_hook(lambda m, a, out, key=host: reference.update({key: out.clone()}))
    x = make_input(name, 3)
    with torch.no_grad():
        torch.testing.assert_close(network(x), plain(x))
    spies = {key.removesuffix(".attention").removesuffix(".conv"): spy
             for key, spy in insertion.attached_blocks(network).items()}
    assert sorted(spies) == sorted(DEFAULT_HOSTS[(name, block)])
    for host, spy in spies.items():
        assert len(spy.seen) == 1
        torch.testing.assert_close(spy.seen[0], reference[host])


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="unknown network 'unet3000'"):
        create("unet3000", 3, 1, 2)
    with pytest.raises(ValueError, match="unknown block 'nope'"):
        tiny("dynunet", attention="nope")
    with pytest.raises(ValueError, match="rd_ration"):
        tiny("dynunet", attention='se{"rd_ration": 0.5}')
    with pytest.raises(ValueError, match="part of the placement now"):
        tiny("dynunet", attention="se", attention_kwargs={"rd_ratio": 0.5})
    with pytest.raises(ValueError, match=r"no position 'before_add'; it has \['stage', 'after_conv1', 'after_conv2', 'shared'\]"):
        tiny("basicunet", attention="sna@before_add")
    with pytest.raises(ValueError, match="spatial_dims"):
        create("segresnet", 4, 1, 2)
    with pytest.raises(ValueError, match="out_channels"):
        create("segresnet", 3, 1, 0)


def test_dynunet_default_layout_follows_nnunet_planning():
    # MSD Task04 at 1 mm with the 40 x 56 x 40 patch of MONAI's DynUNet tutorial: three
    # isotropic stride-2 levels, kernels 3 everywhere.
    kernels, strides = dynunet_layout([40, 56, 40], [1.0, 1.0, 1.0])
    assert strides == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert kernels == [[3, 3, 3]] * 4
    # Thick slices: the z axis is neither convolved (kernel 1) nor pooled at full resolution.
    kernels, strides = dynunet_layout([32, 32, 16], [0.8, 0.8, 2.5])
    assert kernels[0] == [3, 3, 1] and strides[1] == [2, 2, 1]
    with pytest.raises(ValueError, match=r"use \[40, 56, 40\]"):
        dynunet_layout([36, 50, 36])
    network = create("dynunet", 3, 1, 3, patch_size=[40, 56, 40])
    assert network.medattn_config["network_kwargs"]["strides"] == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert builders.size_divisor("dynunet", 3, network.medattn_config["network_kwargs"]) == (8, 8, 8)


def test_deep_supervision_heads_and_loss():
    from monai.losses import DiceCELoss

    shape = (64, 16, 16)  # nnU-Net plans 3 levels below full resolution: 2 deep-supervision heads
    network = create("dynunet", 3, 1, 3, attention="dsm", filters=[4, 8, 16, 32], patch_size=shape)
    assert network.deep_supervision and network.deep_supr_num == 2
    x = torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 3, (1, 1, *shape), generator=torch.Generator().manual_seed(1)).float()
    output = network.train()(x)
    assert tuple(output.shape) == (1, 3, 3, *shape)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    expected = (loss_fn(output[:, 0], labels) + 0.5 * loss_fn(output[:, 1], labels)
                + 0.25 * loss_fn(output[:, 2], labels)) / 1.75
    loss = deep_supervision_loss(output, labels, loss_fn)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    for head in network.deep_supervision_heads:
        assert head.conv.conv.weight.grad.abs().sum() > 0
    with torch.no_grad():
        assert tuple(network.eval()(x).shape) == (1, 3, *shape)


#: Every block on DynUNet; the hook mechanism is the same on the other networks, so they
#: are checked with one block of each kind (per-feature-map, shared DIA unit) and plain.
PER_BLOCK_CASES = [("dynunet", a) for a in [None] + ATTENTIONS] + [
    (name, a) for name in ("segresnet", "basicunet") for a in (None, "dsm", "dia")
]


@pytest.mark.parametrize(("name", "attention"), PER_BLOCK_CASES)
def test_sliding_window_inference_on_a_volume_larger_than_the_roi(name, attention):
    from monai.inferers import sliding_window_inference

    network = tiny(name, attention=attention).eval()
    roi = list(make_input(name, 3).shape[2:])
    volume = torch.randn(1, 1, roi[0] + 5, roi[1] + 3, roi[2], generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        output = sliding_window_inference(volume, roi, 4, network, overlap=0.25)
        again = sliding_window_inference(volume, roi, 4, network, overlap=0.25)
        assert tuple(output.shape) == (1, 3, *volume.shape[2:])
        assert torch.isfinite(output).all()
        torch.testing.assert_close(output, again)  # nothing leaks from window to window
        # One window at exactly the network's input size is one forward pass.
        window = volume[..., : roi[0], : roi[1], : roi[2]]
        torch.testing.assert_close(sliding_window_inference(window, roi, 1, network), network(window))


@pytest.mark.slow
@pytest.mark.parametrize(("name", "attention"), PER_BLOCK_CASES)
def test_torch_export_matches_eager(name, attention):
    network = tiny(name, attention=attention).eval()
    x = make_input(name, 3)
    exported = torch.export.export(network, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), network(x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("attention", [None] + ATTENTIONS)
def test_torchscript_tracing_works_and_scripting_is_refused(attention):
    """The README's export table: trace yes, script no (forward hooks are Python objects)."""
    # Without deep supervision, stock DynUNet scripts (see the test below), so the refusal
    # is the hooks'.
    network = tiny("dynunet", attention=attention, deep_supervision=False).eval()
    x = make_input("dynunet", 3)
    with torch.no_grad():
        traced = torch.jit.trace(network, x, check_trace=False)
        torch.testing.assert_close(traced(x), network(x))
    if attention is None:
        torch.jit.script(network)
    else:
        with pytest.raises(Exception):
            torch.jit.script(network)


@pytest.mark.slow
def test_stock_networks_script_except_deep_supervised_dynunet():
    """The plain column of the README's TorchScript row (MONAI 1.6.1, torch 2.15)."""
    for name in ("segresnet", "basicunet"):
        torch.jit.script(tiny(name).eval())
    torch.jit.script(tiny("dynunet", deep_supervision=False).eval())
    with pytest.raises(Exception):
        torch.jit.script(tiny("dynunet").eval())


#: Blocks that start as the identity: DSM by default, SNA and DIA with ``identity_init``.
IDENTITY_STARTS = ("dsm", 'sna{"identity_init": true}', 'dia{"identity_init": true}',
                   'dia_light{"identity_init": true}')


@pytest.mark.parametrize("attention", IDENTITY_STARTS)
@pytest.mark.parametrize("name", NETWORKS)
def test_identity_start_equals_the_stock_network_at_initialisation(name, attention):
    """Each block at the engine's default position: the network with it computes the stock
    network's function at step 0 (to 1e-6), so a stock checkpoint fine-tunes from itself."""
    torch.manual_seed(0)
    network = tiny(name, attention=attention).eval()
    plain = plain_twin(network).eval()
    x = make_input(name, 3)
    with torch.no_grad():
        torch.testing.assert_close(network(x), plain(x), rtol=0, atol=1e-6)
