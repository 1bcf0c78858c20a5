"""Attention networks built on nnU-Net's real plans (PlainConvUNet and ResEnc, 2D and 3D)."""

from __future__ import annotations

import pytest
import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from medattn.insertion import attached_blocks
from medattn.nnunet.catalog import trainer_classes
from medattn.nnunet.network import AttentionPlan, build_network, encoder_stages, load_stock_weights

pytestmark = pytest.mark.slow  # the fixture runs nnU-Net's planner (about 15 s once)

NUM_CLASSES = 4
TRAINERS = [name for name, cls in trainer_classes().items() if cls.attention is not None and "_smoke" not in name]


def _managers(plans_path, configuration):
    plans_manager = PlansManager(str(plans_path))
    return plans_manager, plans_manager.get_configuration(configuration)


@pytest.fixture(scope="module", params=[("plain", "3d_fullres"), ("plain", "2d"), ("resenc", "3d_fullres"), ("resenc", "2d")],
                ids=lambda p: "-".join(p))
def managers(request, phantom_plans):
    plans, configuration = request.param
    return _managers(phantom_plans[plans], configuration)


def _build(managers, trainer_name=None, deep_supervision=True):
    plans_manager, configuration_manager = managers
    if trainer_name is None:
        return build_network(plans_manager, configuration_manager, 1, NUM_CLASSES, deep_supervision)
    cls = trainer_classes()[trainer_name]
    return cls.build_network_architecture(plans_manager, configuration_manager, 1, NUM_CLASSES, deep_supervision)


@pytest.mark.parametrize("trainer_name", TRAINERS)
def test_attention_network_keeps_stock_keys_and_loads_stock_weights(managers, trainer_name):
    torch.manual_seed(0)
    stock = _build(managers)
    network = _build(managers, trainer_name)
    stock_keys, keys = set(stock.state_dict()), set(network.state_dict())
    assert stock_keys < keys or trainer_name.startswith("nnUNetTrainerSNA")  # SNA adds no tensors
    for key in stock_keys:
        assert network.state_dict()[key].shape == stock.state_dict()[key].shape
    missing = load_stock_weights(network, {"network_weights": stock.state_dict()})
    # BatchNorm fills in an absent num_batches_tracked itself, so it is never "missing".
    new_keys = {key for key in keys - stock_keys if not key.endswith("num_batches_tracked")}
    assert set(missing) == new_keys
    assert attached_blocks(network), "no block was inserted"


@pytest.mark.parametrize("trainer_name", TRAINERS)
def test_forward_backward_and_planner_feature_map_size(managers, trainer_name):
    plans_name = "resenc" if "ResidualEncoder" in managers[1].network_arch_class_name else "plain"
    if (plans_name, len(managers[1].patch_size)) not in {("plain", 3), ("resenc", 2)}:
        pytest.skip("forward/backward runs on plain 3D and ResEnc 2D only, to keep CI short")
    torch.manual_seed(0)
    network = _build(managers, trainer_name)
    configuration_manager = managers[1]
    patch = configuration_manager.patch_size
    outputs = network(torch.randn(1, 1, *patch))
    assert outputs[0].shape == (1, NUM_CLASSES, *patch)
    sum(o.float().mean() for o in outputs).backward()
    unused = [n for n, p in network.named_parameters() if p.grad is None]
    assert not unused, f"parameters without gradient: {unused[:5]}"
    # The planner's memory estimate must keep working on the modified network.
    assert network.compute_conv_feature_map_size(patch) > 0


def test_dsm_trainer_places_blocks_as_documented(managers):
    n_stages = len(encoder_stages(_build(managers)))
    every = attached_blocks(_build(managers, "nnUNetTrainerDSM"))
    last = attached_blocks(_build(managers, "nnUNetTrainerDSM_A"))
    assert len(every) == n_stages
    assert len(last) == 1 and f"stages.{n_stages - 1}" in next(iter(last))


def test_sna_in_blocks_hangs_one_block_per_conv_block(managers):
    stages = encoder_stages(_build(managers))
    inserted = attached_blocks(_build(managers, "nnUNetTrainerSNA_blocks"))
    assert len(inserted) == sum(len(stage.blocks) for stage in stages)


class _ZeroUnit(torch.nn.Module):
    """DIA-protocol unit whose attention is zero: it exposes where the unit acts."""

    def forward(self, x, state=None):
        return x * 0, state


def test_dia_acts_before_the_residual_add_on_resenc_and_on_each_conv_block_on_plain(managers):
    network = _build(managers, "nnUNetTrainerDIA").eval()
    stages = encoder_stages(network)
    for stage in stages:
        stage.module.dia = _ZeroUnit()
    stage = stages[0]
    x = torch.randn(1, stage.blocks[0].conv1.conv.in_channels if stage.residual_branch_ends else 1,
                    *managers[1].patch_size) if stage.residual_branch_ends else None
    with torch.no_grad():
        if stage.residual_branch_ends:
            # Zeroed residual branches leave nonlin(shortcut(x)) > 0 somewhere: the unit acted before the add.
            assert stage.module(x).abs().sum() > 0
        else:
            # Plain stages: the unit multiplies each conv block's output, so the stage output is zero.
            x = torch.randn(1, 1, *managers[1].patch_size)
            assert stage.module(x).abs().sum() == 0


def test_dia_unit_is_shared_within_a_stage(managers):
    network = _build(managers, "nnUNetTrainerDIA")
    for stage in encoder_stages(network):
        assert sum(1 for name, _ in stage.module.named_children() if name == "dia") == 1


def test_unknown_block_in_plan_is_rejected():
    with pytest.raises(ValueError, match="choose one of"):
        AttentionPlan("nope")
    with pytest.raises(ValueError, match="placement"):
        AttentionPlan("se", placement="everywhere")
