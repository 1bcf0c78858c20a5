"""medattn.images.data: layouts, pixel types, splits, aligned transforms, and every bad input
named with its file (through the command: exit 2, no traceback)."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from medattn.cli import main
from medattn.images.data import (ImageDataError, ImageDataset, build_transforms, discover, discover_test, read_image)


def _copy(folder, tmp_path, name="data"):
    target = tmp_path / name
    shutil.copytree(folder, target)
    return target


def test_image_folder_layouts_and_a_recorded_stratified_seeded_split(texture_folder, tmp_path):
    given = discover("classification", texture_folder)
    assert given.split_source == "layout" and given.classes == ["brick", "grass", "gravel"]
    assert (len(given.train), len(given.val), given.channels) == (96, 36, 1)
    flat = _copy(texture_folder / "train", tmp_path)
    first, again, other = (discover("classification", flat, 0.25, seed) for seed in (0, 0, 1))
    assert first.split_record() == again.split_record() != other.split_record()
    assert first.split_source == "seeded"
    assert [sum(s.target == c for s in first.val) for c in range(3)] == [8, 8, 8]  # 25 % of 32 per class


def test_sixteen_bit_and_rgb_pixels(multilabel_data, tmp_path):
    path = multilabel_data / "images" / "train_000.png"
    array = read_image(path)
    assert array.dtype == np.uint16 and array.max() > 255 and array.shape[2] == 1
    np.testing.assert_array_equal(array % 257, 0)  # the fixture's 8-bit values times 257, unchanged
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.full((8, 8, 3), (10, 20, 30), np.uint8)).save(rgb)
    assert read_image(rgb).shape == (8, 8, 3)
    assert read_image(path, channels=3).shape == (32, 32, 3)


def test_a_mixed_gray_and_colour_folder_trains_in_colour(texture_folder, tmp_path):
    folder = _copy(texture_folder / "train", tmp_path)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "brick" / "colour.png")
    assert discover("classification", folder).channels == 3


def test_multilabel_csv_and_voc_layouts(multilabel_data, voc_folder):
    data = discover("multilabel", multilabel_data)
    assert data.split_source == "layout" and data.classes == ["brick", "grass", "gravel"]
    assert all(sum(s.target) in (1, 2) for s in data.train)
    csv_only = discover("multilabel", multilabel_data / "train.csv", 0.25)
    assert csv_only.split_source == "seeded" and len(csv_only.val) == 30
    voc = discover("segmentation", voc_folder)
    assert (voc.split_source, len(voc.train), len(voc.val), voc.classes) == (
        "layout", 48, 16, ["class_0", "class_1", "class_2"])


def test_segmentation_transforms_keep_the_mask_on_its_pixels(voc_folder):
    """The image's texture labels the pixels exactly; after random crops and flips the
    transformed mask must still sit on the pixels it labels (checked on an image whose
    intensity encodes the class)."""
    mask = np.zeros((48, 48), np.int64)
    mask[:, 30:] = 1
    image = (mask * 200 + 20).astype(np.uint8)
    transform = build_transforms("segmentation", True, 40, [0.0], [1.0], crop="resized")
    from torchvision import tv_tensors

    torch.manual_seed(0)
    for _ in range(20):
        pixels, target = transform(tv_tensors.Image(torch.from_numpy(image)[None]),
                                   tv_tensors.Mask(torch.from_numpy(mask)))
        labelled = target != 255
        predicted = (pixels[0] > 0.47).long()  # 20/255 vs 220/255
        agreement = (predicted[labelled] == target[labelled]).float().mean()
        assert agreement > 0.97, float(agreement)


def test_dataset_items_have_the_task_shapes(voc_folder, multilabel_data):
    voc = discover("segmentation", voc_folder)
    dataset = ImageDataset(voc.val, "segmentation", build_transforms("segmentation", False, 32, [0.5] * 3, [0.25] * 3),
                           voc.channels, keep_full_mask=True)
    image, target, full = dataset[0]
    assert image.shape == (3, 32, 32) and target.shape == (32, 32) and full.shape == (48, 48)
    assert set(full.unique().tolist()) <= {0, 1, 2, 255}
    ml = discover("multilabel", multilabel_data)
    image, target = ImageDataset(ml.train, "multilabel", build_transforms("multilabel", True, 32, [0.5], [0.25]),
                                 1)[0]
    assert image.shape == (1, 32, 32) and target.dtype == torch.float32 and target.shape == (3,)


# ----------------------------------------------------------------------------- bad input


def _corrupt_image(folder, tmp_path):
    data = _copy(folder, tmp_path)
    bad = data / "train" / "grass" / "grass_000.png"
    bad.write_bytes(b"not a png at all")
    return data, bad


def _truncated_image(folder, tmp_path):
    data = _copy(folder, tmp_path)
    bad = data / "train" / "grass" / "grass_001.png"
    big = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    Image.fromarray(big).save(bad)
    bad.write_bytes(bad.read_bytes()[:200])  # the header survives, the pixels do not
    return data, bad


def _empty_class(folder, tmp_path):
    data = _copy(folder, tmp_path)
    empty = data / "train" / "empty"
    empty.mkdir()
    return data, empty


def _mask_size(folder, tmp_path):
    data = _copy(folder, tmp_path)
    bad = data / "SegmentationClass" / "train_003.png"
    Image.fromarray(np.zeros((40, 48), np.uint8), mode="L").save(bad)
    return data, bad


def _mask_values(folder, tmp_path):
    data = _copy(folder, tmp_path)
    bad = data / "SegmentationClass" / "val_002.png"
    values = np.zeros((48, 48), np.uint8)
    values[5:9, 5:9] = 7
    Image.fromarray(values, mode="L").save(bad)
    return data, bad


def _csv_value(folder, tmp_path):
    data = _copy(folder, tmp_path)
    rows = list(csv.reader((data / "train.csv").open()))
    rows[3][2] = "0.5"
    with open(data / "train.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return data, data / "train.csv"


def _rgb_mask(folder, tmp_path):
    data = _copy(folder, tmp_path)
    bad = data / "SegmentationClass" / "train_000.png"
    Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(bad)
    return data, bad


BAD_INPUTS = {
    "unreadable image": ("classification", "texture_folder", _corrupt_image, "not a readable image"),
    "truncated image": ("classification", "texture_folder", _truncated_image, "cannot be decoded"),
    "empty class folder": ("classification", "texture_folder", _empty_class, "empty class folder"),
    "mask size": ("segmentation", "voc_folder", _mask_size, "mask size 48x40 differs from its image"),
    "label values": ("segmentation", "voc_folder", _mask_values, "label values [7] outside the 3 classes"),
    "colour mask": ("segmentation", "voc_folder", _rgb_mask, "a mask must be a palette or grayscale image"),
    "multi-label value": ("multilabel", "multilabel_data", _csv_value, "line 4: class values must be 0 or 1"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_named_with_its_file_and_exits_2(case, request, tmp_path, capsys):
    task, fixture, make, message = BAD_INPUTS[case]
    data, bad = make(request.getfixturevalue(fixture), tmp_path)
    extra = ["--num-classes", "3"] if case == "label values" else []
    code = main(["train", "image", "--task", task, "--data", str(data), "--out", str(tmp_path / "run"),
                 "--preset", "resnet20", "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--no-progress",
                 *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(bad) in err and message in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoint_last.pt").exists()


def test_test_sets_are_labelled_when_their_layout_is(texture_folder, voc_folder, tmp_path):
    samples, labelled, _ = discover_test("classification", texture_folder / "test", ["brick", "grass", "gravel"])
    assert labelled and len(samples) == 24
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(next((texture_folder / "test" / "brick").iterdir()), plain / "one.png")
    samples, labelled, _ = discover_test("classification", plain, ["brick", "grass", "gravel"])
    assert not labelled and len(samples) == 1
    with pytest.raises(ImageDataError, match="differ from the training classes"):
        discover_test("classification", texture_folder / "test", ["a", "b", "c"])
    samples, labelled, _ = discover_test("segmentation", voc_folder, ["bg", "a", "b"])
    assert labelled and len(samples) == 16  # val.txt, there being no test.txt


def test_a_file_that_breaks_in_a_loader_worker_is_named_without_the_worker_traceback(texture_folder, tmp_path,
                                                                                  capsys):
    """More than 256 training images: the statistics sample misses some, so a broken file
    is found by a DataLoader worker during the epoch."""
    from medattn.images import samples

    data = samples.make_textures(tmp_path / "many", counts=(("train", 96), ("val", 2)))
    bad = sorted((data / "train" / "grass").iterdir())[5]
    big = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    Image.fromarray(big).save(bad)
    bad.write_bytes(bad.read_bytes()[:200])
    code = main(["train", "image", "--task", "classification", "--data", str(data), "--out", str(tmp_path / "run"),
                 "--preset", "resnet20", "--epochs", "1", "--batch-size", "96", "--workers", "1", "--device", "cpu",
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and str(bad) in err and "cannot be decoded" in err, err
    assert "Traceback" not in err
