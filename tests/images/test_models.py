"""medattn.images.models, ema and the optimizer: heads, local pretrained weights, SyncBN
with blocks attached, EMA on tied parameters (against the decay formula and timm), and
parameter groups."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from medattn import images
from medattn.images.ema import ModelEma
from medattn.images.models import ModelConfig, build_model, load_pretrained
from medattn.insertion import attached_blocks, convert_sync_batchnorm


@pytest.mark.parametrize("name, attention, head, stride, feature_size", [
    ("resnet20", "sna", "fcn", None, 16),  # CIFAR: output stride 4 (64 / 4)
    ("resnet50", "dsm", "deeplabv3", 8, 8),
])
def test_segmentation_models_are_torchvision_heads_on_the_block_carrying_backbone(name, attention, head, stride,
                                                                                feature_size):
    model = build_model(ModelConfig("segmentation", name, attention, 5, 3, head, stride)).eval()
    assert isinstance(model, torchvision.models.segmentation.FCN if head == "fcn"
                      else torchvision.models.segmentation.DeepLabV3)
    assert attached_blocks(model.backbone)
    with torch.no_grad():
        output = model(torch.randn(1, 3, 64, 64))
        features = model.backbone(torch.randn(1, 3, 64, 64))
    assert output["out"].shape == output["aux"].shape == (1, 5, 64, 64)
    assert features["out"].shape[-1] == feature_size


def test_a_stock_torchvision_checkpoint_loads_with_exactly_the_new_keys_missing(tmp_path):
    stock = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(stock.state_dict(), path)
    classifier = build_model(ModelConfig("classification", "resnet18", "dsm", 1000))
    block_keys = sorted(set(classifier.state_dict()) - set(stock.state_dict()))
    assert block_keys and all(".attention." in key for key in block_keys)
    report = load_pretrained(classifier, path)
    assert (report.missing, report.unexpected, report.skipped) == (block_keys, [], [])
    torch.testing.assert_close(classifier.layer1[0].conv1.weight, stock.layer1[0].conv1.weight)

    segmenter = build_model(ModelConfig("segmentation", "resnet18", "dsm", 4))
    report = load_pretrained(segmenter, path)
    assert report.missing == sorted(k[len("backbone."):] for k in segmenter.state_dict()
                                    if k.startswith("backbone.") and ".attention." in k)
    assert report.unexpected == ["fc.bias", "fc.weight"]  # the segmentation backbone has no classifier

    ten_classes = build_model(ModelConfig("classification", "resnet18", None, 10))
    assert load_pretrained(ten_classes, path).skipped == ["fc.bias", "fc.weight"]


def test_pretrained_refuses_a_file_that_is_not_a_state_dict(tmp_path):
    path = tmp_path / "x.pth"
    torch.save({"epoch": 3}, path)
    with pytest.raises(ValueError, match="not a state dict of tensors"):
        load_pretrained(build_model(ModelConfig("classification", "resnet20", None, 3)), path)


def test_sync_batchnorm_conversion_keeps_the_attached_blocks_running():
    model = images.create("resnet20", attention="dsm", num_classes=3).eval()
    plain = copy.deepcopy(model)
    torch.nn.init.normal_(next(iter(attached_blocks(model).values())).parameters().__next__())
    plain.load_state_dict(model.state_dict())
    converted = convert_sync_batchnorm(model).eval()
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in converted.modules()) > 0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), plain(x))
        # torch's converter alone drops the hooks: the blocks would no longer run
        bare = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(plain)).eval()
        assert not attached_blocks(bare)


def _tied_model():
    model = images.create("resnet20", attention="dia_se", num_classes=3)
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    assert len(names) > len(set(id(p) for p in model.parameters()))  # the fixture really has tied weights
    return model


def test_ema_step_is_the_decay_formula_for_tied_parameters():
    model = _tied_model()
    ema = ModelEma(model, decay=0.5)
    ema.update(model)  # first update: a copy
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.train()(torch.randn(4, 3, 32, 32))  # moves the BatchNorm statistics
    ema.update(model)
    averaged = dict(ema.module.named_parameters())
    for name, value in before.items():
        torch.testing.assert_close(averaged[name], value + 0.5, rtol=0, atol=1e-6)
    running = dict(ema.module.named_buffers())
    for name, buffer in model.named_buffers():
        if name.endswith("num_batches_tracked"):
            assert torch.equal(running[name], buffer)  # copied, not averaged


def test_timm_model_ema_v3_default_is_the_reference_this_ema_matches_on_untied_models():
    from timm.utils import ModelEmaV3

    model = images.create("resnet20", num_classes=3)
    ours, timm_ema = ModelEma(model, 0.9), ModelEmaV3(model, decay=0.9)
    ours.update(model)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    ours.update(model)
    timm_ema.update(model)
    for (name, a), b in zip(ours.module.named_parameters(), timm_ema.module.parameters()):
        torch.testing.assert_close(a, b, msg=name)


def test_optimizer_groups_list_each_parameter_once_without_decay_on_norms_and_biases():
    from timm.optim import create_optimizer_v2

    model = _tied_model()
    optimizer = create_optimizer_v2(model, opt="sgd", lr=0.1, weight_decay=1e-4, momentum=0.9)
    listed = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert len(listed) == len(set(listed)) == len(list(model.parameters()))
    no_decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    for name, parameter in model.named_parameters():
        is_norm_or_bias = parameter.ndim <= 1
        assert (id(parameter) in no_decay) == is_norm_or_bias, name
