"""``medattn predict`` with nnU-Net models: equal to nnU-Net's own prediction, geometry kept,
resumable, atomic under kill signals, bad inputs reported while the rest goes on.

The model is ``nnUNetTrainerStock_demo`` trained for one epoch by the shared smoke demo
(see ``tests/inference/shared.py``); the inputs are the phantom's held-out cases, whose
direction matrices are rotations with a flipped axis.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medattn.cli import main
from medattn.data.io import list_images

pytestmark = pytest.mark.slow

# nnUNetv2_predict copies the model's dataset.json and plans.json beside the label maps
MODEL_FILES = ["dataset.json", "plans.json"]
# and medattn records which model wrote them (medattn.inference.batch.RECORD)
FOLDER_FILES = [*MODEL_FILES, "medattn_predict.json"]


def _read(path: Path):
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image


def _assert_same_grid(label_path: Path, image_path: Path) -> None:
    label, label_image = _read(label_path)
    _, image = _read(image_path)
    assert label.shape == sitk.GetArrayFromImage(image).shape
    assert label_image.GetSpacing() == pytest.approx(image.GetSpacing(), abs=1e-6)
    assert label_image.GetOrigin() == pytest.approx(image.GetOrigin(), abs=1e-5)
    assert label_image.GetDirection() == pytest.approx(image.GetDirection(), abs=1e-6)
    assert np.issubdtype(label.dtype, np.integer)


@pytest.fixture(scope="module")
def reference_predictions(stock_model, small_images, tmp_path_factory) -> Path:
    """An uninterrupted ``medattn predict --no-tta`` run over the small cases."""
    out = tmp_path_factory.mktemp("reference")
    assert main(["predict", "--model", str(stock_model), "--input", str(small_images), "--output", str(out),
                 "--device", "cpu", "--no-tta", "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def two_fold_model(stock_model, tmp_path_factory) -> Path:
    """The stock model with a second fold: fold 0's weights plus noise, for ensembling."""
    model = tmp_path_factory.mktemp("models") / stock_model.name
    model.mkdir()
    for name in ("plans.json", "dataset.json"):
        shutil.copy(stock_model / name, model / name)
    shutil.copytree(stock_model / "fold_0", model / "fold_0")
    checkpoint = torch.load(stock_model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    generator = torch.Generator().manual_seed(0)
    checkpoint["network_weights"] = {
        key: value + 0.05 * value.std().nan_to_num() * torch.randn(value.shape, generator=generator)
        if value.is_floating_point() and value.numel() > 1 else value
        for key, value in checkpoint["network_weights"].items()
    }
    (model / "fold_1").mkdir()
    torch.save(checkpoint, model / "fold_1" / "checkpoint_final.pth")
    return model


def test_equals_nnunetv2_predict_with_folds_tta_and_probabilities(two_fold_model, small_images, demo_out, tmp_path,
                                                                  monkeypatch):
    """Label maps and probabilities equal nnU-Net's own command on the same model (two
    small cases, two folds, mirroring on)."""
    from medattn.nnunet.commands import nnunet_environment, run_nnunet

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for image in list_images(small_images)[:2]:
        shutil.copy(image, inputs / image.name)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    monkeypatch.delenv("nnUNet_extTrainer", raising=False)  # nnUNetv2_predict needs it; medattn predict must not
    assert main(["predict", "--model", str(two_fold_model), "--input", str(inputs), "--output", str(ours),
                 "--folds", "0", "1", "--save-probabilities", "--device", "cpu", "--no-progress"]) == 0
    env = nnunet_environment(demo_out / "nnUNet_raw", demo_out / "nnUNet_preprocessed", demo_out / "nnUNet_results")
    run_nnunet("nnUNetv2_predict_from_modelfolder",
               ["-i", inputs, "-o", theirs, "-m", two_fold_model, "-f", "0", "1", "-device", "cpu",
                "--save_probabilities", "-npp", 1, "-nps", 1, "--disable_progress_bar"], env, timeout=900)
    checkpoint = torch.load(two_fold_model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["inference_allowed_mirroring_axes"], "the demo trainer should allow mirroring (TTA)"

    images = list_images(inputs)
    assert len(images) == 2
    for image in images:
        case = image.name.replace("_0000.nii.gz", "")
        ours_labels, _ = _read(ours / f"{case}.nii.gz")
        theirs_labels, _ = _read(theirs / f"{case}.nii.gz")
        np.testing.assert_array_equal(ours_labels, theirs_labels)
        _assert_same_grid(ours / f"{case}.nii.gz", image)
        ours_probabilities = np.load(ours / f"{case}.npz")["probabilities"]
        theirs_probabilities = np.load(theirs / f"{case}.npz")["probabilities"]
        np.testing.assert_allclose(ours_probabilities, theirs_probabilities, rtol=0, atol=1e-6)
        assert (ours / f"{case}.pkl").is_file()


def test_parts_predict_every_case_once_into_one_folder(stock_model, small_images, reference_predictions, tmp_path,
                                                      capsys):
    args = ["predict", "--model", str(stock_model), "--input", str(small_images), "--output", str(tmp_path),
            "--device", "cpu", "--no-tta", "--no-progress", "--num-parts", "2"]
    names = sorted(p.name.replace("_0000", "") for p in list_images(small_images))
    assert main([*args, "--part-id", "1"]) == 0
    assert "3 case(s): 3 predicted" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.glob("*.nii.gz")) == names[1::2]
    assert main([*args, "--part-id", "0"]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.nii.gz")) == names
    for name in names:
        np.testing.assert_array_equal(_read(tmp_path / name)[0], _read(reference_predictions / name)[0])


def test_default_run_keeps_geometry_and_writes_no_probabilities(reference_predictions, small_images):
    images = list_images(small_images)
    written = sorted(p.name for p in reference_predictions.iterdir())
    # the label maps beside FOLDER_FILES
    assert written == sorted([p.name.replace("_0000.nii.gz", ".nii.gz") for p in images] + FOLDER_FILES)
    for image in images:
        _assert_same_grid(reference_predictions / image.name.replace("_0000", ""), image)


@pytest.mark.parametrize("step_size", [0.5, 1.0])
def test_no_tta_equals_nnunet_predictor_without_mirroring(stock_model, phantom_images, tmp_path, step_size):
    """The reference: nnU-Net's predictor in this process, on the array nnU-Net's reader gives
    (a full-size case: several sliding windows), at nnU-Net's default step and at a full step."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from medattn.nnunet import register_trainers

    image = list_images(phantom_images)[0]
    assert main(["predict", "--model", str(stock_model), "--input", str(image), "--output", str(tmp_path),
                 "--no-tta", "--device", "cpu", "--no-progress", "--step-size", str(step_size)]) == 0
    register_trainers()
    predictor = nnUNetPredictor(tile_step_size=step_size, use_mirroring=False, device=torch.device("cpu"),
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(stock_model), (0,), "checkpoint_final.pth")
    data, properties = SimpleITKIO().read_images([str(image)])
    expected = predictor.predict_single_npy_array(data, properties)
    ours, _ = _read(tmp_path / image.name.replace("_0000", ""))
    np.testing.assert_array_equal(ours, expected)


def test_resumes_and_overwrites(stock_model, small_images, tmp_path, capsys):
    """Existing outputs are skipped (same file) unless --overwrite (a new file replaces it)."""
    files = [str(p) for p in list_images(small_images)[:2]]
    args = ["predict", "--model", str(stock_model), "--input", *files, "--output", str(tmp_path),
            "--device", "cpu", "--no-tta", "--no-progress"]
    assert main(args) == 0
    inodes = {p.name: p.stat().st_ino for p in tmp_path.iterdir()}
    assert len(inodes) == 2 + len(FOLDER_FILES)
    capsys.readouterr()
    assert main(args) == 0
    assert "0 predicted, 2 skipped" in capsys.readouterr().out
    assert {p.name: p.stat().st_ino for p in tmp_path.iterdir()} == inodes
    assert main([*args, "--overwrite"]) == 0
    assert "2 predicted, 0 skipped" in capsys.readouterr().out
    renewed = {p.name: p.stat().st_ino for p in tmp_path.iterdir()}
    assert renewed.keys() == inodes.keys()
    assert all(renewed[k] != inodes[k] for k in inodes if k not in FOLDER_FILES)
    assert all(renewed[k] == inodes[k] for k in FOLDER_FILES)  # unchanged, so not rewritten


def _label_maps(output: Path) -> list[Path]:
    """The finished label maps in ``output``; pathlib's ``*`` also matches the hidden
    temporary files that a killed run leaves behind, which are not outputs."""
    return sorted(p for p in output.glob("*.nii.gz") if not p.name.startswith(".")) if output.is_dir() else []


def _start_and_kill_at_first_new_output(args: list[str], output: Path, sig: int, timeout: float = 600):
    """Start ``medattn predict`` in a subprocess, send ``sig`` once a new label map appears."""
    before = {p.name for p in _label_maps(output)}
    process = subprocess.Popen([sys.executable, "-m", "medattn.cli", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if {p.name for p in _label_maps(output)} - before:
            process.send_signal(sig)
            break
        time.sleep(0.02)
    stdout, _ = process.communicate(timeout=120)
    return process.returncode, stdout


def _assert_complete_nifti(path: Path) -> None:
    """Readable to the end: nibabel decompresses the whole stream (and checks its CRC)."""
    import nibabel

    data = np.asanyarray(nibabel.load(str(path)).dataobj)
    assert data.size > 0


def test_killed_runs_leave_no_truncated_files_and_resume(stock_model, small_images, reference_predictions,
                                                        tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for copy in range(3):  # 18 cases, so that the kill lands midway
        for image in list_images(small_images):
            shutil.copy(image, inputs / f"c{copy}_{image.name}")
    output = tmp_path / "out"
    args = ["predict", "--model", str(stock_model), "--input", str(inputs), "--output", str(output),
            "--device", "cpu", "--no-tta", "-j", "1", "--no-progress"]

    code, log = _start_and_kill_at_first_new_output(args, output, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, log
    done_after_term = _label_maps(output)
    assert 1 <= len(done_after_term) < 18
    assert not [p for p in output.iterdir() if p.name.startswith(".")], "SIGTERM must remove temporary files"

    code, log = _start_and_kill_at_first_new_output(args, output, signal.SIGKILL)
    assert code == -signal.SIGKILL, log
    assert len(_label_maps(output)) > len(done_after_term)
    for path in _label_maps(output):
        _assert_complete_nifti(path)

    assert main(args) == 0
    assert not [p for p in output.iterdir() if p.name.startswith(".")], "stale temporary files must be removed"
    for path in _label_maps(output):
        expected, _ = _read(reference_predictions / path.name.split("_", 1)[1])
        np.testing.assert_array_equal(_read(path)[0], expected)
    assert len(_label_maps(output)) == 18


def test_bad_inputs_are_reported_and_the_rest_predicted(stock_model, small_images, tmp_path, capsys):
    good = list_images(small_images)[0]
    array, image = _read(good)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(good, inputs / "good_0000.nii.gz")
    shutil.copy(good, inputs / "plain.nii.gz")  # no channel suffix: keeps its name
    (inputs / "corrupt_0000.nii.gz").write_bytes(b"not an image at all" * 50)
    raw = good.read_bytes()
    (inputs / "halved_0000.nii.gz").write_bytes(raw[: len(raw) // 2])
    shutil.copy(good, inputs / "twochannels_0000.nii.gz")
    shutil.copy(good, inputs / "twochannels_0001.nii.gz")
    vector = sitk.Compose(image, image)
    sitk.WriteImage(vector, str(inputs / "vector_0000.nii.gz"))
    with_nan = sitk.GetImageFromArray(np.where(array > 50, np.nan, array).astype(np.float32))
    with_nan.CopyInformation(image)
    sitk.WriteImage(with_nan, str(inputs / "holes_0000.nii.gz"))
    output = tmp_path / "out"

    code = main(["predict", "--model", str(stock_model), "--input", str(inputs), "--output", str(output),
                 "--device", "cpu", "--no-tta", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1
    assert sorted(p.name for p in output.iterdir()) == sorted(["good.nii.gz", "plain.nii.gz"] + FOLDER_FILES)
    _assert_same_grid(output / "plain.nii.gz", good)
    summary = captured.err[captured.err.index("FAILED (5)"):]
    expectations = {  # file name: what the message must say (names chosen not to contain it)
        "corrupt_0000.nii.gz": "cannot read",
        "halved_0000.nii.gz": "truncated|ended before the end-of-stream",
        "twochannels_0001.nii.gz": "wrong channel count",
        "vector_0000.nii.gz": "wrong channel count",
        "holes_0000.nii.gz": "NaN",
    }
    for name, problem in expectations.items():
        line = next((line for line in summary.splitlines() if name in line), None)
        assert line is not None, f"{name} missing from the failure summary:\n{summary}"
        assert re.search(problem, line), line
    assert "2 predicted, 0 skipped" in captured.err and "5 failed" in captured.err


@pytest.mark.parametrize("step_size", ["0", "-0.5", "1.5", "nan", "half"])
def test_step_size_outside_zero_one_is_refused(step_size, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--model", str(tmp_path), "--input", str(tmp_path), "--output", str(tmp_path / "out"),
              "--step-size", step_size])
    assert exit_info.value.code == 2
    assert f"--step-size: must be a number in (0, 1], got {step_size!r}" in capsys.readouterr().err


def test_step_size_is_checked_by_the_api_too(stock_model, small_images, tmp_path):
    from medattn.inference import predict

    with pytest.raises(ValueError, match=r"step size must be in \(0, 1\].*got 0"):
        predict(stock_model, small_images, tmp_path / "out", step_size=0, progress=False)
    assert not (tmp_path / "out").exists()


def test_outputs_feed_nnunetv2_ensemble_as_they_are(stock_model, demo_out, small_images, tmp_path):
    """Two models' ``--save-probabilities`` folders go to nnU-Net's own ensembling command
    without extra flags (it reads plans.json, dataset.json, CASE.npz and CASE.pkl from them):
    its label maps are the argmax of the mean probabilities, on the input's grid."""
    from medattn.nnunet.commands import nnunet_environment, run_nnunet
    from tests.inference.shared import model_dir

    folders = {name: tmp_path / name for name in ("stock", "dsm", "ensemble")}
    for name, model in (("stock", stock_model), ("dsm", model_dir(demo_out, "nnUNetTrainerDSM_demo"))):
        assert main(["predict", "--model", str(model), "--input", str(small_images), "--output", str(folders[name]),
                     "--device", "cpu", "--no-tta", "--save-probabilities", "--no-progress"]) == 0
    env = nnunet_environment(demo_out / "nnUNet_raw", demo_out / "nnUNet_preprocessed", demo_out / "nnUNet_results")
    run_nnunet("nnUNetv2_ensemble", ["-i", folders["stock"], folders["dsm"], "-o", folders["ensemble"], "-np", 1],
               env, timeout=300)
    images = list_images(small_images)
    for image in images:
        case = image.name.replace("_0000.nii.gz", "")
        mean = np.mean([np.load(folders[name] / f"{case}.npz")["probabilities"] for name in ("stock", "dsm")], axis=0)
        ensembled, _ = _read(folders["ensemble"] / f"{case}.nii.gz")
        np.testing.assert_array_equal(ensembled, mean.argmax(0))
        _assert_same_grid(folders["ensemble"] / f"{case}.nii.gz", image)
    assert len(list(folders["ensemble"].glob("*.nii.gz"))) == len(images)


def _legacy_model(stock_model: Path, root: Path, trainer_name: str) -> Path:
    """A model folder as medattn < 0.2 wrote it for nnUNetTrainerDSM: DSM r=1/16 on every
    stage output (here with gamma switched on), no placement buffer, ``trainer_name`` set."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from medattn.nnunet.catalog import get_trainer_class
    from medattn.nnunet.network import PLACEMENT_KEY, load_stock_weights

    model = root / f"{trainer_name}__nnUNetPlans__3d_fullres"
    (model / "fold_0").mkdir(parents=True)
    for name in MODEL_FILES:
        shutil.copy(stock_model / name, model / name)
    checkpoint = torch.load(stock_model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    plans_manager = PlansManager(checkpoint["init_args"]["plans"])
    configuration = plans_manager.get_configuration(checkpoint["init_args"]["configuration"])
    torch.manual_seed(0)  # the same DSM weights in every folder this makes
    network = get_trainer_class("nnUNetTrainerDSM_stage").build_network_architecture(
        plans_manager, configuration, 1, plans_manager.get_label_manager(checkpoint["init_args"]["dataset_json"])
        .num_segmentation_heads, True)
    load_stock_weights(network, checkpoint)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for key, parameter in network.named_parameters():
            if key.endswith("gamma"):
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    weights = {k: v for k, v in network.state_dict().items() if k != PLACEMENT_KEY}
    torch.save(dict(checkpoint, network_weights=weights, trainer_name=trainer_name),
               model / "fold_0" / "checkpoint_final.pth")
    return model


def test_a_model_of_an_old_placement_predicts_as_its_replacement(stock_model, small_images, demo_out, tmp_path):
    """medattn < 0.2's nnUNetTrainerDSM put DSM on the stage outputs: medattn predict builds
    the trainer that has that placement now and predicts exactly as it; nnUNetv2_predict
    refuses with a message naming it."""
    from medattn.nnunet.commands import NNUNetCommandError, nnunet_environment, run_nnunet

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(list_images(small_images)[0], inputs / list_images(small_images)[0].name)
    legacy = _legacy_model(stock_model, tmp_path / "legacy", "nnUNetTrainerDSM")
    control = _legacy_model(stock_model, tmp_path / "control", "nnUNetTrainerDSM_stage")
    outputs = {}
    for name, model in (("legacy", legacy), ("control", control)):
        outputs[name] = tmp_path / f"out_{name}"
        assert main(["predict", "--model", str(model), "--input", str(inputs), "--output", str(outputs[name]),
                     "--device", "cpu", "--no-tta", "--no-progress"]) == 0
    for image in list_images(outputs["control"]):
        np.testing.assert_array_equal(_read(outputs["legacy"] / image.name)[0], _read(image)[0])
    env = nnunet_environment(demo_out / "nnUNet_raw", demo_out / "nnUNet_preprocessed", demo_out / "nnUNet_results")
    from medattn.nnunet import trainer_folder

    env = dict(env, nnUNet_extTrainer=str(trainer_folder()))
    with pytest.raises(NNUNetCommandError, match="it is now nnUNetTrainerDSM_stage"):
        run_nnunet("nnUNetv2_predict_from_modelfolder",
                   ["-i", inputs, "-o", tmp_path / "theirs", "-m", legacy, "-f", "0", "-device", "cpu",
                    "-npp", 1, "-nps", 1, "--disable_progress_bar", "--disable_tta"], env, timeout=600)


def test_a_crafted_model_folder_is_refused_before_any_of_its_code_runs(stock_model, small_images, tmp_path,
                                                                        capsys):
    """A checkpoint whose pickle would create a marker file: medattn predict exits 2 naming
    the file, and the marker never appears; --trust-model unpickles it (the payload is real)."""
    from tests.test_safe_loading import _crafted_checkpoint

    model = tmp_path / stock_model.name
    (model / "fold_0").mkdir(parents=True)
    for name in MODEL_FILES:
        shutil.copy(stock_model / name, model / name)
    marker = tmp_path / "marker"
    checkpoint = _crafted_checkpoint(model / "fold_0" / "checkpoint_final.pth", marker)
    argv = ["predict", "--model", str(model), "--input", str(small_images), "--output", str(tmp_path / "out"),
            "--device", "cpu", "--no-tta", "--no-progress"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert re.search(rf"{re.escape(str(checkpoint))}: refused: it names the global (io|builtins).open", error)
    assert "--trust-model" in error
    assert not marker.exists()
    assert main(argv + ["--trust-model"]) != 0  # not a real model either, but it was unpickled
    assert marker.exists()
