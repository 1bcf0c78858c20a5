"""``medattn explain`` on ``medattn train image`` checkpoints: maps on the picture's pixel grid,
and Grad-CAM equal to a brute-force computation of the standard formula."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medattn.cli import main
from medattn.images import samples
from medattn.images.training import ImageTrainConfig, ImageTrainer, load_image_checkpoint

pytestmark = pytest.mark.slow


def _train(tmp_path_factory, name, **kwargs):
    out = tmp_path_factory.mktemp(name) / "run"
    ImageTrainer(ImageTrainConfig(out=str(out), device="cpu", progress=False, epochs=1, **kwargs)).run()
    return out


@pytest.fixture(scope="module")
def textures(tmp_path_factory):
    return samples.make_textures(tmp_path_factory.mktemp("textures"))


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, textures):
    """ResNet-20 with CBAM (a spatial and a channel gate), one epoch: the maps, not the accuracy,
    are under test."""
    return _train(tmp_path_factory, "cls", task="classification", data=str(textures), backbone="resnet20",
                  attention="cbam", batch_size=16, lr=0.05)


def test_classifier_maps_lie_on_the_pictures_grid(classifier, textures, tmp_path):
    pictures = sorted((textures / "test" / "brick").iterdir())[:2]
    out = tmp_path / "explain"
    assert main(["explain", "--model", str(classifier), "--input", *map(str, pictures), "--out", str(out),
                 "--gradcam", "0", "--device", "cpu", "--no-progress"]) == 0
    for picture in pictures:
        folder = out / picture.stem
        maps = sorted(folder.glob("*.nii.gz"))
        assert any(m.name.endswith("__spatial.nii.gz") for m in maps)  # CBAM's spatial gate
        assert any(m.name.startswith("gradcam_layer3") for m in maps)  # the last CIFAR ResNet stage
        reference = sitk.ReadImage(str(picture))
        for path in maps:
            written = sitk.ReadImage(str(path))
            assert written.GetSize() == reference.GetSize()
            assert written.GetSpacing() == reference.GetSpacing() and written.GetOrigin() == reference.GetOrigin()
            assert np.isfinite(sitk.GetArrayFromImage(written)).all()
        with open(folder / "channel_weights.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert {r["map"] for r in rows} == {"channel"}  # CBAM's channel gate
        assert all(0 < float(r["weight"]) < 1 for r in rows)
    page = (out / "index.html").read_text()
    assert all(picture.stem in page for picture in pictures)


def test_classification_gradcam_is_the_standard_formula(classifier, textures):
    """ReLU(Σ_k mean(∂y_c/∂A_k) A_k) at layer3, computed here with torch.autograd.grad."""
    from medattn.explain.images import ImageExplainer

    explainer = ImageExplainer(classifier / "checkpoint_last.pt", torch.device("cpu"), gradcam=2)
    case = explainer.cases([textures / "test" / "gravel"])[0][0]
    explanation = explainer.explain(case)
    key = "gradcam/layer3/class_2"
    model, info = load_image_checkpoint(classifier / "checkpoint_last.pt")
    from medattn.images.data import ImageDataset, Sample

    x = ImageDataset([Sample(case.files[0])], "classification", explainer.transform, info["channels"])[0][0][None]
    kept = {}
    handle = model.layer3.register_forward_hook(lambda module, args, output: kept.setdefault("a", output))
    score = model(x)[0, 2]
    handle.remove()
    (gradient,) = torch.autograd.grad(score, kept["a"])
    cam = torch.relu((gradient.mean(dim=(2, 3), keepdim=True) * kept["a"]).sum(1, keepdim=True)).detach()
    size = explanation.spatial[key].shape
    expected = torch.nn.functional.interpolate(cam, size=size, mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(explanation.spatial[key], expected.numpy(), rtol=1e-4, atol=1e-6)


def test_segmentation_model_maps_and_labels_have_the_pictures_size(tmp_path_factory, tmp_path):
    voc = samples.make_segmentation(tmp_path_factory.mktemp("voc"))
    run = _train(tmp_path_factory, "seg", task="segmentation", data=str(voc), backbone="resnet20",
                 attention="dsm", batch_size=8, lr=0.05, image_size=48)
    picture = sorted((voc / "JPEGImages").iterdir())[0]
    out = tmp_path / "explain"
    assert main(["explain", "--model", str(run), "--input", str(picture), "--out", str(out), "--gradcam", "1",
                 "--device", "cpu", "--no-progress"]) == 0
    maps = sorted((out / picture.stem).glob("*.nii.gz"))
    assert any(m.name.endswith("__S.nii.gz") for m in maps)
    assert any(m.name.startswith("gradcam_backbone_layer3") for m in maps)
    width, height = sitk.ReadImage(str(picture)).GetSize()
    for path in maps:
        assert sitk.GetArrayFromImage(sitk.ReadImage(str(path))).shape == (height, width)


def test_bad_class_and_non_images_are_named(classifier, tmp_path, capsys):
    assert main(["explain", "--model", str(classifier), "--input", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--gradcam", "7", "--no-progress"]) == 2
    assert "--gradcam 7" in capsys.readouterr().err
    assert main(["explain", "--model", str(classifier), "--input", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--stage-grids", "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "--stage-grids" in error and "image model" in error
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    assert main(["explain", "--model", str(classifier), "--input", str(text), "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 2
    assert "notes.txt" in capsys.readouterr().err
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    assert main(["explain", "--model", str(classifier), "--input", str(broken), "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 1
    assert "broken.png" in capsys.readouterr().err
