"""preprocess/vindr_boxes.py: resize geometry and its inverse, box cleaning, and fusion
checked against ensemble-boxes' own weighted_boxes_fusion and brute-force means."""

from __future__ import annotations

import numpy as np
import pytest

from medattn.preprocess.common import ConversionError
from medattn.preprocess.vindr_boxes import (ResizeGeometry, clean_boxes, fuse_boxes, iou, plan_resize, resize_image,
                                            to_original)


def _box(reader, name, x0, y0, x1, y1, image="a"):
    return {"image_id": image, "rad_id": reader, "class": name, "x_min": x0, "y_min": y0, "x_max": x1, "y_max": y1}


@pytest.mark.parametrize("mode", ["letterbox", "square"])
@pytest.mark.parametrize("size", [(1955, 1841), (1841, 1955), (640, 480), (300, 300)])
def test_boxes_map_to_the_output_and_back_exactly(mode, size):
    width, height = size
    geometry = plan_resize(width, height, 512, mode)
    assert (geometry.out_width, geometry.out_height) == (512, 512)
    rng = np.random.default_rng(width)
    corners = np.sort(rng.uniform(0, [width, width, height, height], size=(20, 4)).reshape(20, 2, 2), axis=2)
    boxes = np.stack([corners[:, 0, 0], corners[:, 1, 0], corners[:, 0, 1], corners[:, 1, 1]], axis=1)
    np.testing.assert_allclose(geometry.inverse(geometry.forward(boxes)), boxes, atol=1e-9)
    # x pairs with the width, y with the height (the notebooks' swap on non-square images)
    whole = geometry.forward([[0, 0, width, height]])[0]
    if mode == "square":
        np.testing.assert_allclose(whole, [0, 0, 512, 512])
    else:
        assert whole[2] - whole[0] == pytest.approx(512 if width >= height else 512 * width / height, abs=1)
        assert whole[3] - whole[1] == pytest.approx(512 if height >= width else 512 * height / width, abs=1)
        assert whole[0] == pytest.approx(512 - whole[2], abs=1) and whole[1] == pytest.approx(512 - whole[3], abs=1)


def test_the_letterboxed_image_sits_where_the_geometry_says():
    array = np.full((60, 100), 200, np.uint8)  # rows, columns
    geometry = plan_resize(100, 60, 50, "letterbox")
    out = resize_image(array, geometry)
    assert out.shape == (50, 50) and (geometry.pad_x, geometry.pad_y) == (0, 10)
    assert (out[10:40] == 200).all() and (out[:10] == 0).all() and (out[40:] == 0).all()
    sixteen = resize_image(np.full((60, 100), 60000, np.uint16), geometry)
    assert sixteen.dtype == np.uint16 and sixteen[25, 25] == 60000
    assert resize_image(array, plan_resize(100, 60)) is array  # no resize: untouched


def test_to_original_reads_the_manifest(tmp_path):
    import csv

    geometry = plan_resize(1000, 800, 256, "letterbox")
    with open(tmp_path / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["image_id", "width", "height", "out_width", "out_height", "scale_x",
                                         "scale_y", "pad_x", "pad_y", "error"])
        writer.writeheader()
        writer.writerow({"image_id": "x", "width": 1000, "height": 800, **geometry.record(), "error": ""})
        writer.writerow({"image_id": "broken", "width": "", "height": "", "error": "no Pixel Data"})
    box = np.array([[100.0, 200.0, 600.0, 700.0]])
    np.testing.assert_allclose(to_original(geometry.forward(box), "x", tmp_path / "manifest.csv"), box)
    with pytest.raises(ConversionError, match="'broken' is not a converted image"):
        to_original(box, "broken", tmp_path / "manifest.csv")


def test_plan_resize_refuses_bad_values():
    with pytest.raises(ValueError, match="unknown resize mode 'crop'"):
        plan_resize(10, 10, 5, "crop")
    with pytest.raises(ValueError, match="at least 1, got 0"):
        plan_resize(10, 10, 0)
    assert plan_resize(10, 12) == ResizeGeometry(10, 12, 10, 12)


def test_clean_boxes_clips_repairs_and_flags():
    boxes = [_box("R1", "Cardiomegaly", -5, 10, 30, 70),  # clipped to 0..40 x 0..50
             _box("R1", "Cardiomegaly", 0.5, 10, 30, 49.5),  # IoU >= 0.9 with the first, same reader: duplicate
             _box("R2", "Cardiomegaly", 0.5, 10, 30, 49.5),  # another reader: kept
             _box("R1", "Atelectasis", 20, 30, 10, 5),  # inverted: swapped, kept
             _box("R1", "Atelectasis", 45, 10, 60, 20),  # outside the image: zero area
             _box("R1", "Atelectasis", 1, 1, 2, 2, image="not converted")]
    kept, issues = clean_boxes(boxes, {"a": (40, 50)})
    assert [(b["rad_id"], b["class"], b["x_min"], b["y_min"], b["x_max"], b["y_max"]) for b in kept] == [
        ("R1", "Cardiomegaly", 0.0, 10.0, 30.0, 50.0), ("R2", "Cardiomegaly", 0.5, 10, 30, 49.5),
        ("R1", "Atelectasis", 10.0, 5.0, 20.0, 30.0)]
    assert [(i["issue"], i["kept"]) for i in issues] == [("duplicate", False), ("inverted", True),
                                                         ("zero area", False)]


def test_iou_matches_a_brute_force_pixel_count():
    a, b = np.array([2, 3, 12, 9]), np.array([[5, 1, 15, 7]])
    grid = np.zeros((20, 20), int)
    grid[3:9, 2:12] += 1
    grid[1:7, 5:15] += 2
    assert iou(a, b)[0] == pytest.approx((grid == 3).sum() / (grid > 0).sum())


def test_fusion_follows_ensemble_boxes_on_normalised_readers_as_models():
    from ensemble_boxes import weighted_boxes_fusion

    boxes = [_box("R1", "Cardiomegaly", 100, 200, 400, 440), _box("R2", "Cardiomegaly", 120, 220, 420, 460),
             _box("R3", "Nodule/Mass", 50, 50, 60, 62)]
    fused = fuse_boxes(boxes, ["R1", "R2", "R3"], 640, 480)
    # the reference: ensemble-boxes called by hand, as its README says (normalised, one list per model)
    scale = np.array([640, 480, 640, 480])
    ref, scores, labels = weighted_boxes_fusion(
        [np.array([[100, 200, 400, 440]]) / scale, np.array([[120, 220, 420, 460]]) / scale,
         np.array([[50, 50, 60, 62]]) / scale], [[1.0], [1.0], [1.0]], [[3], [3], [8]], iou_thr=0.4, skip_box_thr=0)
    order = np.argsort(labels)
    np.testing.assert_allclose([[b["x_min"], b["y_min"], b["x_max"], b["y_max"]] for b in fused],
                               np.asarray(ref)[order] * scale, atol=1e-3)  # ensemble-boxes works in float32
    cardio, nodule = fused
    np.testing.assert_allclose([cardio["x_min"], cardio["y_min"], cardio["x_max"], cardio["y_max"]],
                               [110, 210, 410, 450], atol=1e-3)  # the brute-force mean of the two boxes
    assert (cardio["score"], cardio["agreement"], cardio["readers"]) == (pytest.approx(2 / 3), 2 / 3, ["R1", "R2"])
    assert (nodule["agreement"], nodule["readers"]) == (1 / 3, ["R3"])


def test_pixel_boxes_would_vanish_in_ensemble_boxes_but_not_here():
    from ensemble_boxes import weighted_boxes_fusion

    with pytest.warns(UserWarning):
        dropped, _, _ = weighted_boxes_fusion([[[10, 10, 40, 40]]], [[1.0]], [[0]])
    assert len(dropped) == 0  # why fuse_boxes normalises
    fused = fuse_boxes([_box("R1", "Aortic enlargement", 10, 10, 40, 40)], ["R1"], 64, 64)
    assert [(b["x_min"], b["x_max"]) for b in fused] == [(pytest.approx(10), pytest.approx(40))]


def test_agreement_counts_readers_not_boxes():
    # two near-copies by one reader (below the duplicate IoU): WBF's score counts them twice
    boxes = [_box("R1", "Cardiomegaly", 100, 100, 300, 300), _box("R1", "Cardiomegaly", 130, 100, 330, 300)]
    (fused,) = fuse_boxes(boxes, ["R1", "R2", "R3"], 512, 512)
    assert fused["score"] == pytest.approx(2 / 3) and fused["agreement"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="among the image's readers"):
        fuse_boxes(boxes, ["R2"], 512, 512)
