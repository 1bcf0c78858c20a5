"""Attention networks built on nnU-Net's real plans (PlainConvUNet and ResEnc, 2D and 3D)."""

from __future__ import annotations

import re

import pytest
import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from medattn.insertion import attached_blocks
from medattn.nnunet.catalog import trainer_classes
from medattn.nnunet.network import PLACEMENT_KEY, build_network, encoder_stages, load_stock_weights
from medattn.nnunet.trainer import RetiredTrainer, TrainingSchedule

pytestmark = pytest.mark.slow  # the fixture runs nnU-Net's planner (about 15 s once)

NUM_CLASSES = 4
# The placements; the schedule variants (_smoke, _bench, _demo) inherit them.
TRAINERS = [name for name, cls in trainer_classes().items()
            if cls.attention is not None and not issubclass(cls, (RetiredTrainer, TrainingSchedule))]
RETIRED = [name for name, cls in trainer_classes().items() if issubclass(cls, RetiredTrainer)]

# Where each trainer's blocks sit, written from the README's trainer table rather than from
# the adapter: (regex of the block's qualified name, which stages, what one match is per stage).
# S is the stage index, "last" the last stage only, "first" the first.
_PLAIN_CONV2 = (r"encoder\.stages\.{S}\.0\.convs\.1\.norm\.attention", "all", "stage")
_RESENC_END = (r"encoder\.stages\.{S}\.blocks\.\d+\.conv2\.norm\.attention", "all", "block")
# A plain stage is nn.Sequential(StackedConvBlocks); a ResEnc stage is the StackedResidualBlocks.
_STAGE = (r"encoder\.stages\.{S}(\.0)?\.attention", "all", "stage")
_UNIT = (r"encoder\.stages\.{S}(\.0)?\.dia", "all", "stage")
EXPECTED = {
    "nnUNetTrainerDSM": {"plain": _PLAIN_CONV2,
                         "resenc": (r"encoder\.stages\.{S}\.blocks\.\d+\.conv1\.norm\.attention", "all", "block")},
    "nnUNetTrainerDSM_A": {"plain": (r"encoder\.stages\.{S}\.0\.convs\.1\.norm\.attention", "last", "stage"),
                           "resenc": (r"encoder\.stages\.{S}\.blocks\.\d+\.conv2\.norm\.attention", "last", "block")},
    "nnUNetTrainerDSM_B": {"plain": (r"encoder\.stages\.{S}\.0\.convs\.0\.norm\.attention", "all", "stage"),
                           "resenc": (r"encoder\.stages\.{S}\.blocks\.\d+\.conv1\.norm\.attention", "all", "block")},
    "nnUNetTrainerDSM_stage": {"plain": _STAGE, "resenc": _STAGE},
    "nnUNetTrainerDSM_A_stage": {"plain": (_STAGE[0], "last", "stage"), "resenc": (_STAGE[0], "last", "stage")},
    "nnUNetTrainerSNA": {"plain": _PLAIN_CONV2, "resenc": _RESENC_END},
    "nnUNetTrainerSNAIdentity": {"plain": _PLAIN_CONV2, "resenc": _RESENC_END},
    "nnUNetTrainerSNA_stage": {"plain": _STAGE, "resenc": _STAGE},
    "nnUNetTrainerSNA_stage_first": {"plain": (_STAGE[0], "first", "stage"), "resenc": (_STAGE[0], "first", "stage")},
    "nnUNetTrainerDIA": {"plain": _UNIT, "resenc": _UNIT},
    "nnUNetTrainerDIAIdentity": {"plain": _UNIT, "resenc": _UNIT},
    "nnUNetTrainerDIALight": {"plain": _UNIT, "resenc": _UNIT},
    "nnUNetTrainerDIASE": {"plain": _UNIT, "resenc": _UNIT},
    **{f"nnUNetTrainer{b}": {"plain": _PLAIN_CONV2, "resenc": _RESENC_END} for b in ("SE", "ECA", "CBAM", "GC")},
    **{f"nnUNetTrainer{b}_stage": {"plain": _STAGE, "resenc": _STAGE} for b in ("SE", "ECA", "CBAM", "GC")},
}
# The block class each trainer family inserts.
BLOCK_TYPES = {"DSM": "DSM", "SNA": "SpectralNormAttention", "SE": "SEBlock", "ECA": "ECABlock",
               "CBAM": "CBAMBlock", "GC": "GCBlock"}


def _managers(plans_path, configuration):
    plans_manager = PlansManager(str(plans_path))
    return plans_manager, plans_manager.get_configuration(configuration)


@pytest.fixture(scope="module", params=[("plain", "3d_fullres"), ("plain", "2d"), ("resenc", "3d_fullres"), ("resenc", "2d")],
                ids=lambda p: "-".join(p))
def managers(request, phantom_plans):
    plans, configuration = request.param
    return _managers(phantom_plans[plans], configuration)


def _encoder_type(managers) -> str:
    return "resenc" if "ResidualEncoder" in managers[1].network_arch_class_name else "plain"


def _build(managers, trainer_name=None, deep_supervision=True):
    plans_manager, configuration_manager = managers
    if trainer_name is None:
        return build_network(plans_manager, configuration_manager, 1, NUM_CLASSES, deep_supervision)
    cls = trainer_classes()[trainer_name]
    return cls.build_network_architecture(plans_manager, configuration_manager, 1, NUM_CLASSES, deep_supervision)


def test_every_trainer_has_a_documented_position():
    assert set(TRAINERS) == set(EXPECTED)


@pytest.mark.parametrize("trainer_name", TRAINERS)
def test_attention_network_keeps_stock_keys_and_loads_stock_weights(managers, trainer_name):
    torch.manual_seed(0)
    stock = _build(managers)
    network = _build(managers, trainer_name)
    stock_state, state = stock.state_dict(), network.state_dict()
    stock_keys, keys = set(stock_state), set(state)
    assert stock_keys < keys
    for key in stock_keys:
        assert state[key].shape == stock_state[key].shape
    missing = load_stock_weights(network, {"network_weights": stock.state_dict()})
    # BatchNorm fills in an absent num_batches_tracked itself, so it is never "missing".
    new_keys = {key for key in keys - stock_keys if not key.endswith("num_batches_tracked")} - {PLACEMENT_KEY}
    assert set(missing) == new_keys
    assert attached_blocks(network), "no block was inserted"


@pytest.mark.parametrize("trainer_name", TRAINERS)
def test_blocks_sit_at_the_documented_hosts(managers, trainer_name):
    stock = _build(managers)
    network = _build(managers, trainer_name)
    pattern, which, per = EXPECTED[trainer_name][_encoder_type(managers)]
    n_stages = len(stock.encoder.stages)
    stages = {"all": range(n_stages), "last": [n_stages - 1], "first": [0]}[which]
    expected = set()
    for s in stages:
        if per == "stage":
            expected.add(s)
        else:  # one block per residual block of the stage, counted on the stock network
            n_blocks = len(stock.encoder.stages[s].blocks)
            expected |= {(s, b) for b in range(n_blocks)}
    found = set()
    for name in attached_blocks(network):
        match = re.fullmatch(pattern.replace("{S}", r"(\d+)"), name)
        assert match, f"{name} is not where {trainer_name} documents its blocks ({pattern})"
        stage = int(match.group(1))
        block = re.search(r"blocks\.(\d+)", name)
        found.add(stage if per == "stage" else (stage, int(block.group(1))))
    assert found == expected
    suffix = trainer_name.removeprefix("nnUNetTrainer").split("_")[0]
    if suffix in BLOCK_TYPES:
        assert {type(b).__name__ for b in attached_blocks(network).values()} == {BLOCK_TYPES[suffix]}


@pytest.mark.parametrize("trainer_name", TRAINERS)
def test_forward_backward_and_planner_feature_map_size(managers, trainer_name):
    if (_encoder_type(managers), len(managers[1].patch_size)) not in {("plain", 3), ("resenc", 2)}:
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


class _CountingZeroUnit(torch.nn.Module):
    """DIA-protocol unit whose attention is zero; it counts its calls, exposing where and
    how often the unit acts."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x, state=None):
        self.calls += 1
        return x * 0, state


def test_dia_acts_before_the_residual_add_on_resenc_and_on_each_conv_layer_on_plain(managers):
    network = _build(managers, "nnUNetTrainerDIA").eval()
    stage = encoder_stages(network)[0]
    stage.module.dia = unit = _CountingZeroUnit()
    residual = _encoder_type(managers) == "resenc"
    in_channels = network.encoder.stem.output_channels if residual else 1
    x = torch.randn(1, in_channels, *managers[1].patch_size)
    with torch.no_grad():
        output = stage.module(x)
    assert unit.calls == len(stage.unit_hosts) == (len(stage.module.blocks) if residual else len(stage.module.convs))
    if residual:
        # Zeroed residual branches leave nonlin(shortcut(x)) > 0 somewhere: the unit acted before the add.
        assert output.abs().sum() > 0
    else:
        # Plain stages: the unit multiplies each conv layer's output, so the stage output is zero.
        assert output.abs().sum() == 0


def test_dia_unit_is_shared_within_a_stage(managers):
    from medattn.blocks.dia import create_unit

    network = _build(managers, "nnUNetTrainerDIA")
    stock = _build(managers)
    added = sum(p.numel() for p in network.parameters()) - sum(p.numel() for p in stock.parameters())
    stages = encoder_stages(stock)
    one_unit_per_stage = sum(sum(p.numel() for p in create_unit("lstm", s.channels, 3).parameters()) for s in stages)
    assert added == one_unit_per_stage  # one unit per stage, not one per block
    for stage in encoder_stages(network):
        units = {id(hook.run.unit) for host in stage.unit_hosts for hook in host._forward_hooks.values()
                 if hasattr(hook, "run")}
        assert units == {id(stage.module.dia)}
        assert len(stage.unit_hosts) >= (2 if _encoder_type(managers) == "plain" else 1)


@pytest.mark.parametrize("trainer_name", RETIRED)
def test_retired_trainers_name_their_replacement(managers, trainer_name):
    replacement = trainer_classes()[trainer_name].replacement
    assert replacement in trainer_classes()
    with pytest.raises(ValueError, match=f"Use {replacement}"):
        _build(managers, trainer_name)


def _legacy_checkpoint(managers, old_placement):
    """The state dict a medattn < 0.2 trainer wrote: its blocks, no placement buffer."""
    from medattn.nnunet.network import insert_attention

    torch.manual_seed(1)
    old = insert_attention(_build(managers), old_placement)
    return old.state_dict()


@pytest.mark.parametrize("trainer_name, old_placement, replacement", [
    ("nnUNetTrainerDSM", 'dsm@stage{"rd_ratio": 0.0625}', "nnUNetTrainerDSM_stage"),
    ("nnUNetTrainerSNA", "sna@stage", "nnUNetTrainerSNA_stage"),  # no parameters: only the buffer tells
    ("nnUNetTrainerGC", "gc@stage", "nnUNetTrainerGC_stage"),
])
def test_a_checkpoint_of_an_old_placement_is_refused_naming_the_trainer_that_has_it(
        managers, trainer_name, old_placement, replacement):
    state = _legacy_checkpoint(managers, old_placement)
    with pytest.raises(ValueError, match=f"it is now {replacement}"):
        _build(managers, trainer_name).load_state_dict(state)
    network = _build(managers, replacement)
    network.load_state_dict(state)  # the replacement predicts as before: same weights, same places
    loaded = network.state_dict()
    for key, value in state.items():
        torch.testing.assert_close(loaded[key], value)


def test_an_unchanged_trainer_loads_its_old_checkpoint_and_a_foreign_placement_is_refused(managers):
    _build(managers, "nnUNetTrainerDIA").load_state_dict(_legacy_checkpoint(managers, "dia"))
    stage_dsm = _build(managers, "nnUNetTrainerDSM_stage").state_dict()
    with pytest.raises(ValueError, match="trained with attention 'dsm@stage"):
        _build(managers, "nnUNetTrainerDSM").load_state_dict(stage_dsm)


def test_a_position_the_encoder_lacks_lists_the_ones_it_has(managers):
    from medattn.nnunet.network import insert_attention

    with pytest.raises(ValueError, match=r"no position 'after_conv3'; it has \['stage', 'after_conv1', 'after_conv2'"):
        insert_attention(_build(managers), "dsm@after_conv3")
    if _encoder_type(managers) == "plain":
        with pytest.raises(ValueError, match="no position 'before_add'"):
            insert_attention(_build(managers), "sna@before_add")


@pytest.mark.parametrize("attention", ["dsm", 'sna{"identity_init": true}', 'dia{"identity_init": true}',
                                       'dia_light{"identity_init": true}'])
def test_identity_start_equals_the_stock_network_at_initialisation(managers, attention):
    """Each block at nnU-Net's default position, with stock weights: the stock output to 1e-6."""
    torch.manual_seed(0)
    stock = _build(managers).eval()
    plans_manager, configuration_manager = managers
    network = build_network(plans_manager, configuration_manager, 1, NUM_CLASSES, True, placement=attention).eval()
    load_stock_weights(network, {"network_weights": stock.state_dict()})
    patch = [min(s, 32) for s in configuration_manager.patch_size]
    x = torch.randn(1, 1, *patch, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for ours, theirs in zip(network(x), stock(x)):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
