"""Label maps: dataset.json (nnU-Net and MSD spellings), evaluate_labels, inline strings."""

from __future__ import annotations

import json

import pytest

from medattn.evaluation.labels import LabelMap, LabelMapError, parse_label_map

BTCV = {"background": 0, "spleen": 1, "right kidney": 2, "left kidney": 3, "gallbladder": 4, "esophagus": 5,
        "liver": 6, "stomach": 7, "aorta": 8}


def write_json(tmp_path, data):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(data))
    return path


def test_nnunet_dataset_json_scores_every_foreground_label(tmp_path):
    label_map = parse_label_map(write_json(tmp_path, {"labels": BTCV, "file_ending": ".nii.gz"}))
    assert label_map.scored == tuple(range(1, 9))
    assert label_map.name_of(8) == "aorta"
    assert label_map.valid_values == frozenset(range(0, 9))


def test_evaluate_labels_selects_a_subset_by_name_or_value(tmp_path):
    path = write_json(tmp_path, {"labels": BTCV, "evaluate_labels": ["aorta", "gallbladder", 3, "6"]})
    label_map = parse_label_map(str(path))
    assert label_map.scored == (3, 4, 6, 8)
    assert 5 in label_map.valid_values  # valid, just not scored


def test_msd_dataset_json_spelling(tmp_path):
    path = write_json(tmp_path, {"labels": {"0": "background", "1": "Anterior", "2": "Posterior"}})
    label_map = parse_label_map(path)
    assert label_map.names == {1: "Anterior", 2: "Posterior"}


def test_real_msd_hippocampus_dataset_json(shared_data):
    label_map = parse_label_map(shared_data / "Task04_Hippocampus" / "dataset.json")
    assert label_map.scored == (1, 2)


def test_inline_map():
    label_map = parse_label_map("1=aorta, 2=gallbladder,0=background")
    assert label_map.names == {1: "aorta", 2: "gallbladder"}
    assert label_map.source == "inline label map"


def test_mapping_and_label_map_pass_through():
    assert parse_label_map({1: "a", "2": "b"}).names == {1: "a", 2: "b"}
    existing = LabelMap(names={3: "x"}, scored=(3,))
    assert parse_label_map(existing) is existing


@pytest.mark.parametrize(
    "data, message",
    [
        ({"labels": {"background": 0, "a": 1, "b": 1}}, "value 1 is given twice"),
        ({"labels": {"background": 0, "tumor": []}}, "'tumor' lists no values"),
        ({"labels": BTCV, "evaluate_labels": ["kidney"]}, "'kidney' is not a label name"),
        ({"labels": BTCV, "evaluate_labels": ["background"]}, "never scored"),
        ({"labels": BTCV, "evaluate_labels": [42]}, "42 is not in"),
        ({"labels": BTCV, "evaluate_labels": []}, "non-empty list"),
        ({"names": BTCV}, 'with a "labels" object'),
        ({"labels": {"background": 0, "a": -2}}, "negative"),
        ({"labels": {"background": 0, "a": "x1"}}, "not an integer"),
    ],
)
def test_malformed_json_maps_name_the_file_and_problem(tmp_path, data, message):
    path = write_json(tmp_path, data)
    with pytest.raises(LabelMapError, match=message) as info:
        parse_label_map(path)
    assert str(path) in str(info.value)


def test_unreadable_json_names_the_file(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text("{not json")
    with pytest.raises(LabelMapError, match="cannot read label map JSON"):
        parse_label_map(path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("1=aorta,1=liver", "value 1 is given twice"),
        ("1=aorta,2=aorta", "name 'aorta' is used by values 1 and 2"),
        ("1=aorta,liver", "not of the form VALUE=NAME"),
        ("x=aorta", "not an integer"),
        ("0=background", "no label to score"),
    ],
)
def test_malformed_inline_maps(text, message):
    with pytest.raises(LabelMapError, match=message):
        parse_label_map(text)


def test_missing_file_is_reported():
    with pytest.raises(LabelMapError, match="label map file not found"):
        parse_label_map("/nonexistent/dataset.json")
