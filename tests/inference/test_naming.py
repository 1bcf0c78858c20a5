"""Input files to cases, and cases to output names (no model needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medattn.inference.naming import Case, collect_inputs, group_cases, split_channel


def _touch(folder: Path, *names: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        (folder / name).write_bytes(b"")
        paths.append(folder / name)
    return paths


@pytest.mark.parametrize(
    "name, expected",
    [
        ("liver_001_0000.nii.gz", ("liver_001", 0)),
        ("liver_001_0003.nrrd", ("liver_001", 3)),
        ("liver_001.nii.gz", ("liver_001", None)),
        ("case_12.nii", ("case_12", None)),  # two digits: not a channel suffix
        ("_0000.nii.gz", ("_0000", None)),  # no case name before the suffix
    ],
)
def test_split_channel(name, expected):
    assert split_channel(name) == expected


def test_channel_files_and_plain_files_name_their_outputs(tmp_path):
    files = _touch(tmp_path / "in", "a_0000.nii.gz", "b.nii.gz", "c_0000.nrrd", "notes.txt")
    cases, problems = group_cases(collect_inputs([tmp_path / "in"]), num_channels=1)
    assert problems == []
    assert [(c.name, c.files, c.suffix) for c in cases] == [
        ("a", (files[0],), ".nii.gz"),
        ("b", (files[1],), ".nii.gz"),
        ("c", (files[2],), ".nrrd"),
    ]
    out = tmp_path / "out"
    assert [c.label_path(out).name for c in cases] == ["a.nii.gz", "b.nii.gz", "c.nrrd"]
    assert cases[0].probability_paths(out) == (out / "a.npz", out / "a.pkl")


def test_multichannel_cases_are_ordered_by_channel(tmp_path):
    files = _touch(tmp_path, "x_0001.nii.gz", "x_0000.nii.gz")
    cases, problems = group_cases(collect_inputs([tmp_path]), num_channels=2)
    assert problems == [] and cases == [Case("x", (files[1], files[0]), ".nii.gz")]


@pytest.mark.parametrize(
    "names, num_channels, expected",
    [
        (["x_0000.nii.gz"], 2, "wrong channel count"),  # missing channel 1
        (["x_0000.nii.gz", "x_0001.nii.gz"], 1, "wrong channel count"),  # one channel too many
        (["x_0001.nii.gz"], 1, "nnU-Net's convention"),  # a case number read as a channel: hint
        (["x.nii.gz"], 2, "needs 2 channels"),
        (["x.nii.gz", "x_0000.nii.gz"], 1, "would all write the output"),
        (["x.nii.gz", "x.nrrd"], 1, "would all write the output"),
        (["x_0000.nii.gz", "x_0001.nrrd"], 2, "different formats"),
    ],
)
def test_bad_cases_are_reported_and_the_rest_kept(tmp_path, names, num_channels, expected):
    files = _touch(tmp_path, *names, *[f"good_{c:04d}.nii.gz" for c in range(num_channels)])
    cases, problems = group_cases(files, num_channels)
    assert [c.name for c in cases] == ["good"]
    assert len(problems) == 1 and problems[0].name == "x"
    assert expected in problems[0].message
    # the message names the offending files
    assert all(str(tmp_path / name) in problems[0].message for name in names)


def test_the_same_file_given_twice_is_one_case(tmp_path):
    (path,) = _touch(tmp_path, "a_0000.nii.gz")
    cases, problems = group_cases(collect_inputs([tmp_path, path]), num_channels=1)
    assert [c.name for c in cases] == ["a"] and problems == []


def test_collect_inputs_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        collect_inputs([tmp_path / "missing.nii.gz"])
    (notes,) = _touch(tmp_path, "notes.txt")
    with pytest.raises(ValueError, match="notes.txt: not an image"):
        collect_inputs([notes])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        collect_inputs([tmp_path / "empty"])
    with pytest.raises(ValueError, match="num_channels"):
        group_cases([], 0)
