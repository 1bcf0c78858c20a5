"""``medattn predict`` with MONAI-path checkpoints: mirroring TTA, geometry, agreement with the
MONAI path's own predictor."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medattn.inference.monai_backend import MirroredNetwork


def _network(spatial_dims: int) -> torch.nn.Module:
    torch.manual_seed(0)
    conv = torch.nn.Conv3d if spatial_dims == 3 else torch.nn.Conv2d
    return torch.nn.Sequential(conv(2, 4, 3, padding=1), torch.nn.ReLU(), conv(4, 3, 3, padding=1)).double()


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_mirroring_is_the_mean_over_every_flip_combination(spatial_dims):
    """Brute force: all 2^d on/off flip patterns, each flipped back, averaged."""
    network = _network(spatial_dims)
    x = torch.randn(1, 2, *[6 + d for d in range(spatial_dims)], dtype=torch.float64)
    expected = torch.zeros(1, 3, *x.shape[2:], dtype=torch.float64)
    patterns = list(itertools.product((False, True), repeat=spatial_dims))
    for pattern in patterns:
        dims = [axis + 2 for axis, flip in enumerate(pattern) if flip]
        flipped = torch.flip(x, dims) if dims else x
        out = network(flipped)
        expected += torch.flip(out, dims) if dims else out
    expected /= len(patterns)
    torch.testing.assert_close(MirroredNetwork(network, tuple(range(spatial_dims)))(x), expected)


def test_mirrored_prediction_is_flip_equivariant():
    """Averaging over the flip group makes the prediction commute with every flip."""
    network = MirroredNetwork(_network(3), (0, 1, 2))
    x = torch.randn(1, 2, 5, 6, 7, dtype=torch.float64)
    base = network(x)
    for dims in ([2], [3, 4], [2, 3, 4]):
        torch.testing.assert_close(network(torch.flip(x, dims)), torch.flip(base, dims))
    plain = _network(3)
    assert not torch.allclose(plain(torch.flip(x, [2])), torch.flip(plain(x), [2])), "the test network is not symmetric"


def test_deep_supervision_outputs_use_the_first_head():
    class TwoHeads(torch.nn.Module):
        def forward(self, x):
            return [x * 2, x * 3]

    x = torch.randn(1, 1, 4, 4, 4)
    torch.testing.assert_close(MirroredNetwork(TwoHeads(), (0,))(x), x * 2)


@pytest.mark.slow
def test_monai_checkpoint_predicts_on_the_input_grid(demo_out, phantom_images, tmp_path):
    """The MONAI checkpoint of the smoke demo: label maps on the input grid, equal (without TTA)
    to the MONAI path's own Predictor; TTA output differs from it only by the mirroring."""
    from medattn.cli import main
    from medattn.data.io import list_images
    from medattn.inference.monai_backend import find_monai_checkpoint
    from medattn.networks.inference import Predictor

    checkpoint = find_monai_checkpoint(demo_out / "monai" / "dynunet_dsm")
    images = list_images(phantom_images)[:2]
    plain, mirrored = tmp_path / "plain", tmp_path / "mirrored"
    base = ["predict", "--model", str(checkpoint.parent), "--input", *map(str, images), "--device", "cpu",
            "--no-progress"]
    assert main([*base, "--output", str(plain), "--no-tta", "--save-probabilities"]) == 0
    assert main([*base, "--output", str(mirrored)]) == 0
    reference = Predictor(checkpoint, device="cpu", progress=False)
    for image_path in images:
        name = image_path.name.replace("_0000", "")
        image = sitk.ReadImage(str(image_path))
        for folder in (plain, mirrored):
            label = sitk.ReadImage(str(folder / name))
            assert label.GetSize() == image.GetSize()
            assert label.GetSpacing() == pytest.approx(image.GetSpacing(), abs=1e-6)
            assert label.GetOrigin() == pytest.approx(image.GetOrigin(), abs=1e-5)
            assert label.GetDirection() == pytest.approx(image.GetDirection(), abs=1e-6)
            assert np.issubdtype(sitk.GetArrayFromImage(label).dtype, np.integer)
        expected, _ = reference.predict_case([image_path])
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(plain / name))), expected)
        probabilities = np.load(plain / name.replace(".nii.gz", ".npz"))["probabilities"]
        assert probabilities.shape[1:] == sitk.GetArrayFromImage(image).shape
        np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-4)
        np.testing.assert_array_equal(probabilities.argmax(axis=0), expected)
    assert not list(mirrored.glob("*.npz")), "probabilities are written only when asked"


@pytest.mark.slow
def test_step_size_sets_monai_overlap(demo_out, phantom_images, tmp_path):
    """--step-size 1 is MONAI's sliding window with overlap 0 (the MONAI path's Predictor)."""
    from medattn.cli import main
    from medattn.data.io import list_images
    from medattn.inference.monai_backend import find_monai_checkpoint
    from medattn.networks.inference import Predictor

    checkpoint = find_monai_checkpoint(demo_out / "monai" / "dynunet_dsm")
    image_path = list_images(phantom_images)[0]
    assert main(["predict", "--model", str(checkpoint), "--input", str(image_path), "--output", str(tmp_path),
                 "--no-tta", "--step-size", "1", "--device", "cpu", "--no-progress"]) == 0
    expected, _ = Predictor(checkpoint, device="cpu", overlap=0.0, progress=False).predict_case([image_path])
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / image_path.name.replace("_0000", ""))))
    np.testing.assert_array_equal(ours, expected)
