"""``medattn explain`` on a phantom with rotated, flipped, anisotropic grids: every map is aligned."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest

from medattn.cli import main
from medattn.data.io import check_same_geometry, read_header, read_image
from medattn.networks.builders import create
from medattn.networks.training import save_checkpoint
from medattn.networks.transforms import TransformConfig
from tests.cli_help import help_text
from tests.explain.stage_grids import assert_aligned


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "checkpoint_last.pt"
    network = create("dynunet", 3, 1, 4, attention="dsm", filters=[4, 8, 16, 32], patch_size=[32, 32, 16],
                     spacing=[0.87, 0.87, 2.68])
    save_checkpoint(path, network, TransformConfig(spacing=[0.87, 0.87, 2.68], intensity="ct", roi=[32, 32, 16]),
                    labels={0: "background", 1: "a", 2: "b", 3: "c"}, channel_names=["CT"], epoch=1)
    return path


@pytest.fixture(scope="module")
def explained(checkpoint, tmp_path_factory):
    from medattn.data.phantom import make_phantom_dataset

    data = make_phantom_dataset(tmp_path_factory.mktemp("raw"), n_cases=2, seed=3, shape=(12, 24, 20))
    out = tmp_path_factory.mktemp("explain")
    code = main(["explain", "--model", str(checkpoint), "--input", str(data / "imagesTr"), "--out", str(out),
                 "--gradcam", "1", "--no-tta", "--stage-grids", "--device", "cpu", "--no-progress"])
    assert code == 0
    return data, out


def test_help_lists_the_options(capsys):
    text = help_text(capsys, "explain")
    for option in ("--model", "--input", "--out", "--blocks", "--gradcam", "--layer", "--device", "--no-tta",
                   "--stage-grids"):
        assert option in text


@pytest.mark.slow
def test_every_map_has_the_geometry_of_its_input(explained):
    data, out = explained
    images = sorted((data / "imagesTr").glob("*_0000.nii.gz"))
    assert len(images) == 2
    for image in images:
        case = image.name.removesuffix("_0000.nii.gz")
        maps = sorted(m for m in (out / case).glob("*.nii.gz") if not m.name.endswith("__stage.nii.gz"))
        names = {m.name for m in maps}
        assert {n for n in names if n.endswith("__S.nii.gz")} and {n for n in names if "gradcam" in n}
        reference = read_header(image)
        for path in maps:
            # size, spacing, origin and direction (NIfTI stores the direction in float32)
            check_same_geometry(reference, read_header(path), names=("input", "map"), context=path.name)
            values, _ = read_image(path)
            assert np.isfinite(values).all()
        s_map = read_image(next(p for p in maps if p.name.endswith("__S.nii.gz")))[0]
        assert 0 < s_map.min() and s_map.max() < 1  # DSM's S is a sigmoid map


@pytest.mark.slow
def test_stage_grids_lie_where_the_input_grid_maps_lie(explained):
    """Every map below the first stage also comes on its feature grid: the training spacing
    (0.87, 0.87, 2.68) times an integer stride, and in physical space on top of the
    input-grid map (SimpleITK resamples one onto the other)."""
    _, out = explained
    correlations = []
    for case in sorted(p for p in out.iterdir() if p.is_dir()):
        stages = sorted(case.glob("*__stage.nii.gz"))
        assert any("__S__" in p.name for p in stages) and any(p.name.startswith("gradcam") for p in stages)
        assert not any(p.name.startswith("encoder_0") or "input_block" in p.name for p in stages)  # stride 1
        for path in stages:
            spacing = sorted(read_header(path).spacing)
            ratios = [s / t for s, t in zip(spacing, sorted([0.87, 0.87, 2.68]))]
            assert all(abs(r - round(r)) < 1e-3 and round(r) >= 1 for r in ratios) and max(ratios) > 1.5, ratios
            correlations.append(assert_aligned(path, case / path.name.replace("__stage.nii.gz", ".nii.gz")))
    assert sum(c is not None for c in correlations) >= 4, correlations
    page = (out / "index.html").read_text()
    assert "__stage.nii.gz" in page


@pytest.mark.slow
def test_channel_weights_and_the_index(explained):
    _, out = explained
    case = sorted(p for p in out.iterdir() if p.is_dir())[0]
    with open(case / "channel_weights.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["map"] for r in rows} == {"C"}
    assert all(0 < float(r["weight"]) < 1 for r in rows)  # C is a sigmoid gate
    page = (out / "index.html").read_text()
    pictures = re.findall(r'src="([^"]+\.png)"', page)
    assert pictures and all((out / p).is_file() for p in pictures)
    assert len(pictures) == len(list(out.rglob("*.png")))


def test_an_nnunet_model_or_a_missing_input_is_named(checkpoint, tmp_path, capsys):
    code = main(["explain", "--model", str(checkpoint), "--input", str(tmp_path / "nope.nii.gz"),
                 "--out", str(tmp_path / "o"), "--no-progress"])
    assert code == 2
    assert "nope.nii.gz" in capsys.readouterr().err
    code = main(["explain", "--model", str(checkpoint), "--input", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--blocks", "sna", "--no-progress"])
    assert code == 2
    assert "no block to explain among ['sna']" in capsys.readouterr().err
