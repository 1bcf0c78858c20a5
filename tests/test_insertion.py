"""The insertion mechanism on small hand-built networks."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from medattn.insertion import attach_after, attach_shared_unit, attached_blocks, resolve_stage_indices


class Scale(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = nn.Parameter(torch.tensor(factor))

    def forward(self, x):
        return x * self.factor


class Stage(nn.Module):
    """Not a Sequential: a stage with its own forward, like nnU-Net's StackedConvBlocks."""

    def __init__(self):
        super().__init__()
        self.convs = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1))

    def forward(self, x):
        return self.convs(x)


class CountingUnit(nn.Module):
    """A DIA-protocol unit that records the state it receives and multiplies by (t + 1)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))
        self.seen = []

    def forward(self, x, state=None):
        step = 0 if state is None else state
        self.seen.append(state)
        return x * (step + 1) * self.weight, step + 1


def test_attach_after_applies_block_and_keeps_stock_keys():
    torch.manual_seed(0)
    stage = Stage()
    x = torch.randn(1, 2, 5, 5)
    stock_out = stage(x)
    stock_keys = set(stage.state_dict())
    attach_after(stage, Scale(3.0))
    torch.testing.assert_close(stage(x), 3.0 * stock_out)
    assert stock_keys < set(stage.state_dict())
    assert set(stage.state_dict()) - stock_keys == {"attention.factor"}


def test_sequential_host_hands_the_block_to_its_last_element():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Identity(), Stage())
    x = torch.randn(1, 2, 4, 4)
    expected = 2.0 * seq(x)
    attach_after(seq, Scale(2.0))
    assert len(seq) == 2  # the container's layout is unchanged
    assert "1.attention.factor" in seq.state_dict()
    torch.testing.assert_close(seq(x), expected)


def test_name_clash_raises():
    stage = Stage()
    attach_after(stage, Scale(1.0))
    with pytest.raises(ValueError, match="attention"):
        attach_after(stage, Scale(1.0))


def test_shared_unit_threads_state_through_blocks_and_resets_per_call():
    stage = Stage()
    unit = CountingUnit()
    attach_shared_unit(stage, list(stage.convs), unit)
    x = torch.randn(1, 2, 4, 4)
    first = stage(x)
    second = stage(x)
    torch.testing.assert_close(first, second)  # nothing leaks between calls
    assert unit.seen == [None, 1, None, 1]
    # Hand-computed without the hooked modules: block t's output is multiplied by t + 1.
    conv0, conv1 = stage.convs
    plain0 = nn.functional.conv2d(x, conv0.weight, conv0.bias, padding=1)
    manual = 2 * nn.functional.conv2d(1 * plain0, conv1.weight, conv1.bias, padding=1)
    torch.testing.assert_close(first, manual)
    assert set(stage.state_dict()) >= {"dia.weight"}
    assert sum(1 for key in stage.state_dict() if key.endswith("weight") and "dia" in key) == 1


def test_shared_unit_on_a_sequential_stage_of_blocks():
    """A stage that is an nn.Sequential of its blocks (SegResNet, ResNet layers): the state
    restarts before the first block although the unit lives in the last one."""
    torch.manual_seed(0)
    stage = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 1))
    x = torch.randn(1, 2, 4, 4)
    stock = copy.deepcopy(stage)
    unit = CountingUnit()
    owner = attach_shared_unit(stage, list(stage), unit)
    assert owner is stage[2] and len(stage) == 3
    for _ in range(2):
        unit.seen.clear()
        out = stage(x)
        assert unit.seen == [None, 1, 2]
    # Block t's output is multiplied by t + 1, computed on a copy without hooks.
    torch.testing.assert_close(out, 3 * stock[2](2 * stock[1](1 * stock[0](x))))
    assert attached_blocks(stage) == {"2.dia": unit}


def test_shared_unit_with_an_explicit_owner():
    network = nn.Module()
    network.stage = nn.Sequential(nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 1))
    attach_shared_unit(network.stage, list(network.stage), CountingUnit(), name="dia_stage", owner=network)
    assert "dia_stage.weight" in network.state_dict()
    assert set(attached_blocks(network)) == {"dia_stage"}
    with pytest.raises(ValueError, match="Sequential"):
        attach_shared_unit(network.stage, list(network.stage), CountingUnit(), owner=network.stage)
    with pytest.raises(ValueError, match="empty"):
        attach_shared_unit(network.stage, [], CountingUnit())


def test_hooked_networks_deepcopy_and_pickle():
    stage = Stage()
    attach_after(stage.convs[0], Scale(2.0))
    attach_shared_unit(stage, list(stage.convs), CountingUnit())
    x = torch.randn(1, 2, 4, 4)
    for clone in (copy.deepcopy(stage), pickle.loads(pickle.dumps(stage))):
        torch.testing.assert_close(clone(x), stage(x))
        assert clone.dia is not stage.dia


def test_attached_blocks_lists_inserted_modules():
    stage = Stage()
    attach_after(stage.convs[0], Scale(2.0))
    attach_shared_unit(stage, list(stage.convs), CountingUnit())
    assert set(attached_blocks(stage)) == {"convs.0.attention", "dia"}


@pytest.mark.parametrize(
    "spec, expected",
    [("all", [0, 1, 2, 3]), (None, [0, 1, 2, 3]), ("last", [3]), ("first", [0]), (-1, [3]), ([0, -1, 0], [0, 3])],
)
def test_resolve_stage_indices(spec, expected):
    assert resolve_stage_indices(spec, 4) == expected


@pytest.mark.parametrize("spec", ["middle", 4, [-5], [True]])
def test_resolve_stage_indices_rejects_bad_specs(spec):
    with pytest.raises(ValueError):
        resolve_stage_indices(spec, 4)
