"""The recorder sees every block's maps and leaves the network's output untouched."""

from __future__ import annotations

import pytest
import torch

from medattn.explain import AttentionRecorder
from medattn.networks.builders import create

ROI = [16, 16, 16]


def _network(attention):
    torch.manual_seed(0)
    return create("dynunet", 3, 1, 3, attention=attention, filters=[4, 8, 16], patch_size=ROI,
                  spacing=[1.0, 1.0, 1.0]).eval()


@pytest.mark.parametrize("attention, spatial, channel", [
    ("sna", {"weights"}, set()),
    ("dsm", {"S", "M_mean"}, {"C"}),
    ('dsm{"mode": "spatial"}', {"S"}, set()),
    ("cbam", {"spatial"}, {"channel"}),
    ("se", set(), {"gate"}),
    ("eca", set(), {"gate"}),
    ("dia", set(), {"h0", "h1"}),  # one unit per stage, recalibrating its two conv layers
])
def test_every_block_is_recorded_and_the_output_is_unchanged(attention, spatial, channel):
    network = _network(attention)
    x = torch.randn(2, 1, *ROI)
    with torch.no_grad():
        expected = network(x)
        with AttentionRecorder(network) as recorder:
            seen = network(x)
    assert torch.equal(seen, expected)
    assert recorder.records, attention
    for name, record in recorder.records.items():
        assert set(record.spatial) == spatial and set(record.channel) == channel, name
        for value in record.spatial.values():
            assert value.shape[:2] == (2, 1) and value.ndim == 5
        for value in record.channel.values():
            assert value.ndim == 2 and value.shape[0] == 2
    # hooks are gone after the block
    with torch.no_grad():
        network(x)
    assert all(not m._forward_hooks for m in network.modules() if type(m).__name__ == "SpectralNormAttention")


def test_sna_weights_are_the_blocks_own_map_on_its_input():
    network = _network("sna")
    inputs = {}
    block = next(m for m in network.modules() if type(m).__name__ == "SpectralNormAttention")
    block.register_forward_hook(lambda m, a, o: inputs.update(x=a[0]))
    x = torch.randn(1, 1, *ROI)
    with torch.no_grad(), AttentionRecorder(network) as recorder:
        network(x)
        reference = block.attention_map(inputs["x"])
    recorded = [r.spatial["weights"] for r in recorder.records.values()]
    assert any(torch.equal(w, reference) for w in recorded)
    assert all(torch.allclose(w.mean(dim=(2, 3, 4)), torch.ones(1, 1)) for w in recorded)  # N·softmax: mean 1


def test_selecting_blocks_by_kind_and_naming_what_is_there():
    network = _network("sna")
    with pytest.raises(ValueError, match="no block to explain among \\['dsm'\\]"):
        AttentionRecorder(network, blocks=["dsm"])
    assert AttentionRecorder(network, blocks=["sna"]).blocks
