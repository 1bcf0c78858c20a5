"""``medattn predict --postprocessing``: nnU-Net's ``postprocessing.pkl`` applied before each
label map is written, equal to running ``nnUNetv2_apply_postprocessing`` afterwards.

The postprocessing files are written with nnU-Net's own ``save_pickle`` and function
(``remove_all_but_largest_component_from_segmentation``), in the format
``nnUNetv2_find_best_configuration`` writes.
"""

from __future__ import annotations

import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medattn.cli import main
from medattn.data.io import list_images
from medattn.inference.batch import ModelSource, load_backend
from medattn.inference.nnunet_backend import load_postprocessing


def _write_largest_component_pkl(path: Path, labels: list[int]) -> Path:
    from batchgenerators.utilities.file_and_folder_operations import save_pickle
    from nnunetv2.postprocessing.remove_connected_components import (
        remove_all_but_largest_component_from_segmentation,
    )

    save_pickle(([remove_all_but_largest_component_from_segmentation], [{"labels_or_regions": labels}]), str(path))
    return path


def test_load_postprocessing_reads_nnunets_format(tmp_path):
    from nnunetv2.postprocessing.remove_connected_components import (
        remove_all_but_largest_component_from_segmentation,
    )

    functions, keywords = load_postprocessing(_write_largest_component_pkl(tmp_path / "pp.pkl", [1, 2]))
    assert functions == [remove_all_but_largest_component_from_segmentation]
    assert keywords == [{"labels_or_regions": [1, 2]}]
    (tmp_path / "none.pkl").write_bytes(pickle.dumps(([], [])))
    assert load_postprocessing(tmp_path / "none.pkl") == ([], [])


@pytest.mark.parametrize("content, problem", [
    (b"not a pickle at all", "not a readable postprocessing.pkl"),
    (pickle.dumps({"postprocessing": "largest"}), "expected nnU-Net's (functions, keyword arguments)"),
    (pickle.dumps(([len], [])), "refused: it names the global builtins.len"),
    (pickle.dumps((["remove"], [{}])), "expected nnU-Net's (functions, keyword arguments)"),
])
def test_unusable_postprocessing_files_are_named(tmp_path, content, problem):
    path = tmp_path / "postprocessing.pkl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(problem)) as error:
        load_postprocessing(path)
    assert str(path) in str(error.value)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_postprocessing(tmp_path / "missing.pkl")


def test_postprocessing_is_refused_for_monai_checkpoints(tmp_path):
    with pytest.raises(ValueError, match="applies to nnU-Net models"):
        load_backend(ModelSource("monai", tmp_path / "checkpoint_best.pt"), device="cpu",
                     postprocessing=tmp_path / "postprocessing.pkl")


def _two_blob_logits(backend, prepared) -> torch.Tensor:
    """Logits on the preprocessed grid: label 1 in a large and a small box, background elsewhere."""
    classes = len(backend.label_manager.all_labels)
    logits = torch.zeros((classes, *prepared.data.shape[1:]))
    logits[0] = 1.0
    z, y, x = prepared.data.shape[1:]
    logits[1, : z // 2, : y // 2, : x // 2] = 5.0
    logits[1, -3:, -3:, -3:] = 5.0
    return logits


@pytest.mark.slow
def test_export_equals_nnunetv2_apply_postprocessing(stock_model, small_images, demo_out, tmp_path):
    """The same logits exported with and without postprocessing; nnU-Net's command, run on
    the plain label map, gives the post-processed one."""
    from scipy import ndimage

    from medattn.inference.naming import group_cases
    from medattn.inference.nnunet_backend import NNUNetBackend
    from medattn.nnunet.commands import nnunet_environment, run_nnunet

    pkl = _write_largest_component_pkl(tmp_path / "postprocessing.pkl", [1, 2, 3])
    plain = NNUNetBackend(stock_model, [0], None, torch.device("cpu"), tta=False)
    processed = NNUNetBackend(stock_model, [0], None, torch.device("cpu"), tta=False, postprocessing=pkl)
    assert "postprocessing: remove_all_but_largest_component_from_segmentation" in processed.description
    cases, problems = group_cases(list_images(small_images)[:2], 1)
    assert not problems
    folders = {name: tmp_path / name for name in ("plain", "ours", "theirs")}
    for folder in folders.values():
        folder.mkdir()
    for case in cases:
        prepared = plain.prepare(case)
        logits = _two_blob_logits(plain, prepared)
        plain.export(case, prepared, logits, folders["plain"], False)
        processed.export(case, prepared, logits, folders["ours"], False)

    env = nnunet_environment(demo_out / "nnUNet_raw", demo_out / "nnUNet_preprocessed", demo_out / "nnUNet_results")
    run_nnunet("nnUNetv2_apply_postprocessing",
               ["-i", folders["plain"], "-o", folders["theirs"], "-pp_pkl_file", pkl, "-np", 1,
                "-plans_json", stock_model / "plans.json", "-dataset_json", stock_model / "dataset.json"],
               env, timeout=300)
    for case in cases:
        before, ours, theirs = (sitk.GetArrayFromImage(sitk.ReadImage(str(case.label_path(folders[name]))))
                                for name in ("plain", "ours", "theirs"))
        np.testing.assert_array_equal(ours, theirs)
        assert ndimage.label(before == 1)[1] == 2 and ndimage.label(ours == 1)[1] == 1
        assert 0 < (ours == 1).sum() < (before == 1).sum()
        written, reference = sitk.ReadImage(str(case.label_path(folders["ours"]))), sitk.ReadImage(str(case.files[0]))
        assert written.GetDirection() == pytest.approx(reference.GetDirection(), abs=1e-6)


@pytest.mark.slow
def test_cli_applies_postprocessing_and_reports_it(stock_model, small_images, tmp_path, capsys):
    from batchgenerators.utilities.file_and_folder_operations import save_pickle
    from nnunetv2.postprocessing.remove_connected_components import apply_postprocessing

    pkl = _write_largest_component_pkl(tmp_path / "postprocessing.pkl", [1, 2, 3])
    base = ["predict", "--model", str(stock_model), "--input", str(small_images), "--device", "cpu", "--no-tta",
            "--no-progress"]
    assert main([*base, "--output", str(tmp_path / "plain")]) == 0
    assert main([*base, "--output", str(tmp_path / "processed"), "--postprocessing", str(pkl)]) == 0
    out = capsys.readouterr().out
    assert "postprocessing: remove_all_but_largest_component_from_segmentation({'labels_or_regions': [1, 2, 3]})" in out
    functions, keywords = load_postprocessing(pkl)
    for path in sorted((tmp_path / "plain").glob("*.nii.gz")):
        plain = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        processed = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "processed" / path.name)))
        np.testing.assert_array_equal(processed, apply_postprocessing(plain, functions, keywords))

    broken = tmp_path / "broken.pkl"
    shutil.copy(pkl, broken)
    broken.write_bytes(broken.read_bytes()[:20])
    assert main([*base, "--output", str(tmp_path / "never"), "--postprocessing", str(broken)]) == 2
    assert f"--postprocessing {broken}: not a readable postprocessing.pkl" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
    save_pickle(([], []), str(tmp_path / "empty.pkl"))
    assert main([*base, "--output", str(tmp_path / "empty"), "--postprocessing", str(tmp_path / "empty.pkl")]) == 0
    assert "postprocessing: none (the file lists no step)" in capsys.readouterr().out
