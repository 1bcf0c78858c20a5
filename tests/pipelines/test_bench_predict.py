"""``medattn bench predict``: both commands really run on two small crops with the shared
one-epoch model; the checks that fail a run (a command failing, label maps that differ);
the command line.

No test looks at a timing value: only that the table and the ratio are printed and
consistent with each other.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil

import numpy as np
import pytest

from medattn.cli import main
from medattn.pipelines import bench_predict as bench
from tests.cli_help import help_text

#: Rows of the printed table: command, median wall seconds, seconds per case.
ROW = re.compile(r"^\| `(nnUNetv2_predict|medattn predict)` \| (\d+\.\d) \| (\d+\.\d\d) \|$", re.MULTILINE)
RATIO = re.compile(r"^throughput ratio medattn / nnU-Net: (\d+\.\d\d) \(identical label maps\)$", re.MULTILINE)


@pytest.fixture(scope="module")
def model(stock_model):
    """nnUNetTrainerStock_demo of the shared smoke demo, trained for one epoch (fold 0)."""
    return stock_model


@pytest.fixture(scope="module")
def crops(small_images, tmp_path_factory):
    """Two of the shared held-out crops (20 x 36 x 36 voxels, one sliding window, rotated and
    flipped frames)."""
    from medattn.data.io import list_images

    folder = tmp_path_factory.mktemp("bench_predict_inputs")
    for path in list_images(small_images)[:2]:
        shutil.copy(path, folder / path.name)
    return folder


def _argv(model, inputs, work, *extra) -> list[str]:
    return ["bench", "predict", "--model", str(model), "--input", str(inputs), "--no-tta", "--repeats", "1",
            "--device", "cpu", "--workdir", str(work), *extra]


def _main(argv) -> tuple[int, str, str]:
    """``main(argv)``'s exit code, stdout and stderr (capsys is function-scoped; the shared
    run below is not)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def bench_run(model, crops, tmp_path_factory):
    """One real run of both commands: (exit code, stdout, stderr, work folder)."""
    work = tmp_path_factory.mktemp("bench_predict_work")
    return (*_main(_argv(model, crops, work)), work)


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def test_help_lists_the_options(capsys):
    text = help_text(capsys, "bench", "predict")
    assert "nnUNetv2_predict" in text
    for option in ("--model", "--input", "--cases", "--shape", "--device", "--folds", "--no-tta", "--repeats",
                   "--workdir"):
        assert option in text


# ---------------------------------------------------------------------------------------
# A real run
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_run_prints_both_commands_and_their_ratio(bench_run, model):
    code, out, err, _ = bench_run
    assert code == 0, err
    for name in ("nnUNetv2_predict", "medattn predict"):
        assert re.search(rf"^repeat 1/1: {name}: \d+\.\d s$", out, re.MULTILINE), out
    assert (f"2 cases of 20 x 36 x 36 voxels, model {model.name} folds 0, device cpu (" in out
            and "TTA off, median of 1" in out), out
    assert "| command | wall time (s) | s / case |\n|---|---|---|\n" in out
    rows = {name: (float(wall), float(per_case)) for name, wall, per_case in ROW.findall(out)}
    assert list(rows) == ["nnUNetv2_predict", "medattn predict"], out
    for wall, per_case in rows.values():
        assert wall > 0 and per_case == pytest.approx(wall / 2, abs=0.03)
    ratio = RATIO.search(out)
    assert ratio, out
    # The printed times are rounded to 0.1 s and the ratio to 0.01: the ratio agrees with the
    # times within both roundings (CI once printed 20.1 / 7.1 with a ratio of 2.86).
    nnunet, medattn = rows["nnUNetv2_predict"][0], rows["medattn predict"][0]
    lowest, highest = (nnunet - 0.05) / (medattn + 0.05), (nnunet + 0.05) / (medattn - 0.05)
    assert lowest - 0.005 <= float(ratio.group(1)) <= highest + 0.005


@pytest.mark.slow
def test_both_commands_write_the_same_label_maps_on_the_input_grid(bench_run, crops):
    import SimpleITK as sitk

    code, _, err, work = bench_run
    assert code == 0, err
    folders = [work / "outputs" / "nnUNetv2_predict", work / "outputs" / "medattn"]
    for source in sorted(crops.glob("*_0000.nii.gz")):
        image = sitk.ReadImage(str(source))
        name = source.name.replace("_0000.nii.gz", ".nii.gz")
        labels = [sitk.ReadImage(str(folder / name)) for folder in folders]
        for label in labels:
            assert label.GetSize() == image.GetSize()
            np.testing.assert_allclose(label.GetSpacing(), image.GetSpacing(), atol=1e-6)
            np.testing.assert_allclose(label.GetOrigin(), image.GetOrigin(), atol=1e-5)
            np.testing.assert_allclose(label.GetDirection(), image.GetDirection(), atol=1e-6)
        arrays = [sitk.GetArrayFromImage(label) for label in labels]
        np.testing.assert_array_equal(arrays[0], arrays[1])
        assert set(np.unique(arrays[0])) <= {0, 1, 2, 3}
    assert sorted(p.name for p in folders[0].glob("*.nii.gz")) == sorted(
        p.name for p in folders[1].glob("*.nii.gz")) and len(list(folders[0].glob("*.nii.gz"))) == 2


# ---------------------------------------------------------------------------------------
# Failures
# ---------------------------------------------------------------------------------------


def _flip_one_voxel(folder):
    import SimpleITK as sitk

    path = sorted(folder.glob("*.nii.gz"))[0]
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    array[0, 0, 0] = 1 if array[0, 0, 0] == 0 else 0
    changed = sitk.GetImageFromArray(array)
    changed.CopyInformation(image)
    sitk.WriteImage(changed, str(path), True)


def _drop_one_case(folder):
    sorted(folder.glob("*.nii.gz"))[-1].unlink()


@pytest.mark.slow
@pytest.mark.parametrize("corrupt", [_flip_one_voxel, _drop_one_case], ids=["one-voxel", "missing-case"])
def test_different_label_maps_fail_the_run(bench_run, model, crops, tmp_path, monkeypatch, corrupt):
    """The commands' step is replaced by copies of the real run's outputs, medattn's then
    changed: the run's own comparison must catch it, exit 1 and print no table."""
    code, _, _, real_work = bench_run
    assert code == 0

    def copy_outputs(commands, work, env, repeats):
        for name in commands:
            shutil.copytree(bench._output_folder(real_work, name), bench._output_folder(work, name))
        corrupt(bench._output_folder(work, bench.MEDATTN))
        return {name: [1.0] for name in commands}

    monkeypatch.setattr(bench, "_time_commands", copy_outputs)
    code, out, err = _main(_argv(model, crops, tmp_path / "work"))
    assert code == 1
    assert "the two commands wrote different label maps" in err
    assert "throughput ratio" not in out and "| command |" not in out


@pytest.mark.slow
def test_a_failing_command_stops_the_run_with_its_output(model, crops, tmp_path):
    """Fold 9 was never trained: nnU-Net (run first) fails, its error is shown, medattn never runs."""
    code, out, err = _main(_argv(model, crops, tmp_path / "work", "--folds", "9"))
    assert code == 1
    assert err.startswith("nnUNetv2_predict failed:\n") and "fold_9" in err, err
    assert "repeat" not in out and "| command |" not in out
    assert not (tmp_path / "work" / "outputs" / "medattn").exists()
