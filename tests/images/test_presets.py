"""medattn.images: ResNet presets with the papers' placements, anchored to the papers."""

from __future__ import annotations

import re

import pytest
import torch

from medattn import images
from medattn.insertion import attached_blocks

M = 1e6


def _params(network) -> int:
    return sum(p.numel() for p in network.parameters())


def _increment(name, **kwargs) -> int:
    backbone = images.preset(name).backbone if name in images.presets() else name
    return _params(images.create(name, **kwargs)) - _params(images.create(backbone, num_classes=kwargs.get("num_classes")))


def test_the_papers_presets_exist():
    required = {"resnet18", "resnet50", "resnet20", "resnet164", "dsnet50_a", "dsnet50_b", "sna_resnet18",
                "sna_resnet20", "sna_resnet50", "dia_resnet164", "dia_light_resnet164", "se_resnet50",
                "eca_resnet50"}
    assert required <= set(images.presets())


def test_stock_backbones_have_the_papers_sizes():
    # ResNet paper Table 6: ResNet-20 0.27M (CIFAR-10; medattn's projection shortcuts add 1 %).
    assert _params(images.create("resnet20", num_classes=10)) == pytest.approx(0.27 * M, rel=0.015)
    # DIA paper Table 10: "the original ResNet164 (1.73M)" on CIFAR-100.
    assert _params(images.create("resnet164", num_classes=100)) == pytest.approx(1.73 * M, rel=0.005)
    # torchvision's own count for ResNet-50 (25,557,032).
    assert _params(images.create("resnet50")) == 25_557_032


def test_dsnet50_a_adds_the_papers_parameters():
    # DSNet Tables 5, 6, 8: 50.67 - 47.13, 50.68 - 47.13, 45.302 - 41.750 M (Table 7 swaps A and B).
    assert _increment("dsnet50_a") == pytest.approx(3.55 * M, rel=0.01)


def test_dsnet50_b_keeps_sknets_width_floor_and_matches_the_paper_without_it():
    # DSNet Tables 5, 6, 8: +1.81, +1.82, +1.815 M. medattn keeps SKNet's L = 32 floor on the
    # selection FC (see medattn.images.named_presets), which adds 0.127 M; without it, the paper's count.
    with_floor = _increment("dsnet50_b")
    without = _increment("resnet50", attention='dsm@after_conv1{"rd_ratio": 0.0625, "sk_min_width": 0}')
    assert without == pytest.approx(1.815 * M, rel=0.015)
    assert with_floor == pytest.approx(1.958 * M, rel=0.001)
    # The floor is the whole difference: 16 bottlenecks, each selection FC widened from r to 32.
    widths = [64] * 3 + [128] * 4 + [256] * 6 + [512] * 3  # conv1 widths of ResNet-50's bottlenecks
    extra = sum((32 - round(c / 16)) * (c + 1) + (32 - round(c / 16)) * 2 * c for c in widths if c / 16 < 32)
    assert with_floor - without == extra


@pytest.mark.parametrize("name", ["sna_resnet18", "sna_resnet20", "sna_resnet50"])
def test_sna_presets_add_no_parameters(name):
    assert _increment(name) == 0
    assert attached_blocks(images.create(name))


@pytest.mark.parametrize("rd_ratio, increment", [(1, 0.86), (1 / 4, 0.22), (1 / 8, 0.11), (1 / 16, 0.05)])
def test_dia_lstm_on_resnet164_adds_table_10s_parameters(rd_ratio, increment):
    """Table 10 counts the LSTM's 10 N^2 / r weights (Sec. 7.2); medattn's units also have
    biases (2 N / r + 8 N per stage, 3.6k-4.5k here), which the table's 0.01M rounding
    does not show at r <= 8."""
    network = images.create("resnet164", num_classes=100, attention=f'dia{{"rd_ratio": {rd_ratio}}}')
    weights = sum(p.numel() for key, p in network.named_parameters() if ".dia." in key and p.ndim >= 2)
    assert weights == pytest.approx(increment * M, abs=0.005 * M)  # the table rounds to 0.01 M
    biases = _increment("resnet164", num_classes=100, attention=f'dia{{"rd_ratio": {rd_ratio}}}') - weights
    assert biases == sum(2 * round(n * rd_ratio) + 8 * n for n in (64, 128, 256))


def test_dia_preset_is_table_10s_default_ratio():
    assert _increment("dia_resnet164", num_classes=100) == _increment(
        "resnet164", num_classes=100, attention='dia{"rd_ratio": 0.25}')


def test_se_resnet50_matches_senets_count():
    # SENet (Hu et al.), Table 2: SE-ResNet-50 28.1M against ResNet-50's 25.6M (r = 16).
    assert _params(images.create("se_resnet50")) == pytest.approx(28.09 * M, abs=0.01 * M)
    assert 0 < _increment("eca_resnet50") < 200  # ECA-Net: k parameters per block only


# Where the presets put their blocks, written from the papers (DSNet Table 4; SNA, SENet,
# ECA-Net: end of the residual branch; DIANet: one unit per stage), not from the adapter.
HOSTS = {
    "dsnet50_a": (r"layer4\.[0-2]\.bn2\.attention", 3),
    "dsnet50_b": (r"layer[1-4]\.\d+\.bn1\.attention", 16),
    "sna_resnet50": (r"layer[1-4]\.\d+\.bn3\.attention", 16),
    "se_resnet50": (r"layer[1-4]\.\d+\.bn3\.attention", 16),
    "eca_resnet50": (r"layer[1-4]\.\d+\.bn3\.attention", 16),
    "sna_resnet18": (r"layer[1-4]\.[01]\.bn2\.attention", 8),
    "sna_resnet20": (r"layer[1-3]\.[0-2]\.bn2\.attention", 9),
    "dia_resnet164": (r"layer[1-3]\.17\.dia", 3),
    "dia_light_resnet164": (r"layer[1-3]\.17\.dia", 3),
}


@pytest.mark.parametrize("name", sorted(HOSTS))
def test_presets_put_their_blocks_where_the_papers_do(name):
    pattern, count = HOSTS[name]
    found = attached_blocks(images.create(name))
    assert len(found) == count
    assert all(re.fullmatch(pattern, key) for key in found), sorted(found)[:3]


class _Spy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return x


@pytest.mark.parametrize("position, host", [("after_conv1", "bn1"), ("after_conv2", "bn2"), ("before_add", "bn2")])
def test_in_block_positions_see_the_norm_output_before_the_relu(position, host, monkeypatch):
    """after_convN follows bnN (before the ReLU that is applied in place afterwards);
    before_add is the branch's last norm, before the residual add."""
    from medattn import blocks

    monkeypatch.setattr(blocks, "create", lambda *args, **kwargs: _Spy())
    network = images.create("resnet18", num_classes=10, attention=f"se@{position}:0").eval()
    plain = images.create("resnet18", num_classes=10).eval()
    plain.load_state_dict(network.state_dict())
    recorded = {}
    for index in (0, 1):
        getattr(plain.layer1[index], host).register_forward_hook(
            lambda m, a, out, key=index: recorded.update({key: out.clone()}))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(network(x), plain(x))
    for index in (0, 1):
        spy = getattr(network.layer1[index], host).attention
        assert recorded[index].min() < 0  # before the ReLU
        torch.testing.assert_close(spy.seen[0], recorded[index])


@pytest.mark.parametrize("name, size", [("dsnet50_a", 64), ("dsnet50_b", 64), ("sna_resnet20", 32),
                                        ("dia_light_resnet164", 32), ("se_resnet50", 64)])
def test_presets_train(name, size):
    torch.manual_seed(0)
    network = images.create(name, num_classes=5)
    if name.startswith("dsnet"):  # DSM starts as the identity; open it so every parameter gets a gradient
        for key, parameter in network.named_parameters():
            if key.endswith("gamma"):
                torch.nn.init.constant_(parameter, 1.0)
    logits = network(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 5)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 3])).backward()
    missing = [key for key, p in network.named_parameters() if p.grad is None]
    assert not missing, missing[:5]


def test_create_records_the_resolved_placement_and_refuses_bad_requests():
    network = images.create("resnet20", attention="sna", in_channels=1, num_classes=3)
    assert network.medattn_config == {"preset": "resnet20", "backbone": "resnet20", "num_classes": 3,
                                      "in_channels": 1, "attention": "sna@before_add", "dilate": False}
    assert network(torch.randn(1, 1, 32, 32)).shape == (1, 3)
    assert images.create("resnet18", attention="dsm").medattn_config["attention"] == "dsm@after_conv1"
    with pytest.raises(ValueError, match="unknown preset 'resnet19'"):
        images.create("resnet19")
    with pytest.raises(ValueError, match="preset 'dsnet50_a' already places"):
        images.create("dsnet50_a", attention="sna")
