"""``medattn predict`` with an nnU-Net cascade (``3d_lowres`` then ``3d_cascade_fullres``).

The reference is nnU-Net's own command run stage by stage, as nnU-Net documents it:
``nnUNetv2_predict_from_modelfolder`` on the ``3d_lowres`` model, then on the cascade
model with ``-prev_stage_predictions``. The models are trained by nnU-Net's real
commands (fold ``all``, medattn's DSM trainer on the smoke schedule) on a phantom big
enough, under a small GPU memory target, for nnU-Net's planner to add a cascade.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medattn.cli import main
from medattn.data.io import list_images

pytestmark = pytest.mark.slow

DATASET_ID = 992
DATASET = "Dataset992_Phantom"
TRAINER = "nnUNetTrainerDSM_smoke"


@pytest.fixture(scope="module")
def cascade(tmp_path_factory) -> dict:
    """Both stages trained by nnU-Net's commands; the environment and the held-out images."""
    from medattn.data.phantom import make_phantom_dataset
    from medattn.nnunet.commands import nnunet_environment, run_nnunet

    root = tmp_path_factory.mktemp("cascade")
    raw, preprocessed, results = root / "raw", root / "preprocessed", root / "results"
    for folder in (raw, preprocessed, results):
        folder.mkdir()
    # 40 x 96 x 96 voxels under a 0.1 GB target: the fullres patch covers < 25% of a case,
    # so nnU-Net's planner adds 3d_lowres and 3d_cascade_fullres. Two training cases: fold
    # "all"'s final validation (both stages predict every training case) is most of the time.
    make_phantom_dataset(raw, n_cases=2, n_test=2, seed=0, shape=(40, 96, 96), dataset_id=DATASET_ID)
    env = nnunet_environment(raw, preprocessed, results, n_proc=2)
    run_nnunet("nnUNetv2_extract_fingerprint", ["-d", DATASET_ID, "-np", 2], env, timeout=600)
    run_nnunet("nnUNetv2_plan_experiment", ["-d", DATASET_ID, "-gpu_memory_target", 0.1], env, timeout=600)
    configurations = json.loads((preprocessed / DATASET / "nnUNetPlans.json").read_text())["configurations"]
    assert configurations["3d_cascade_fullres"]["previous_stage"] == "3d_lowres", configurations.keys()
    run_nnunet("nnUNetv2_preprocess", ["-d", DATASET_ID, "-c", "3d_lowres", "3d_fullres", "-np", 2, 2], env,
               timeout=600)
    for configuration in ("3d_lowres", "3d_cascade_fullres"):
        run_nnunet("nnUNetv2_train", [DATASET_ID, configuration, "all", "-tr", TRAINER, "-device", "cpu"], env,
                   timeout=900)
    models = results / DATASET
    # Crops of the held-out cases (same rotated frames) keep the sliding windows few.
    images = root / "images"
    images.mkdir()
    for path in list_images(raw / DATASET / "imagesTs"):
        sitk.WriteImage(sitk.ReadImage(str(path))[8:64, 8:64, 4:28], str(images / path.name), True)
    return {
        "env": env,
        "lowres": models / f"{TRAINER}__nnUNetPlans__3d_lowres",
        "cascade": models / f"{TRAINER}__nnUNetPlans__3d_cascade_fullres",
        "images": images,
    }


@pytest.fixture(scope="module")
def nnunet_stages(cascade, tmp_path_factory) -> dict[str, Path]:
    """nnU-Net's own two-stage prediction of the held-out images, with probabilities."""
    from medattn.nnunet.commands import run_nnunet

    out = tmp_path_factory.mktemp("nnunet_cascade")
    common = ["-f", "all", "-device", "cpu", "--save_probabilities", "-npp", 1, "-nps", 1, "--disable_progress_bar"]
    run_nnunet("nnUNetv2_predict_from_modelfolder",
               ["-i", cascade["images"], "-o", out / "lowres", "-m", cascade["lowres"], *common], cascade["env"],
               timeout=900)
    run_nnunet("nnUNetv2_predict_from_modelfolder",
               ["-i", cascade["images"], "-o", out / "cascade", "-m", cascade["cascade"],
                "-prev_stage_predictions", out / "lowres", *common], cascade["env"], timeout=900)
    return {"lowres": out / "lowres", "cascade": out / "cascade"}


def _cases(images: Path) -> list[str]:
    return [path.name.replace("_0000.nii.gz", "") for path in list_images(images)]


def _labels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _assert_equal_predictions(ours: Path, theirs: Path, cases: list[str], probabilities: bool = True) -> None:
    for case in cases:
        np.testing.assert_array_equal(_labels(ours / f"{case}.nii.gz"), _labels(theirs / f"{case}.nii.gz"))
        if probabilities:
            np.testing.assert_allclose(np.load(ours / f"{case}.npz")["probabilities"],
                                       np.load(theirs / f"{case}.npz")["probabilities"], rtol=0, atol=1e-6)


def test_cascade_model_runs_its_lowres_sibling_first_and_equals_nnunet(cascade, nnunet_stages, tmp_path, capsys,
                                                                      monkeypatch):
    monkeypatch.delenv("nnUNet_extTrainer", raising=False)  # medattn predict must not need it
    out = tmp_path / "out"
    assert main(["predict", "--model", str(cascade["cascade"]), "--input", str(cascade["images"]),
                 "--output", str(out), "--device", "cpu", "--save-probabilities", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert f"predicting the 3d_lowres stage first with {cascade['lowres']}" in captured.err
    assert "previous stage: nnU-Net" in captured.out
    cases = _cases(cascade["images"])
    assert len(cases) == 2
    _assert_equal_predictions(out / "3d_lowres", nnunet_stages["lowres"], cases, probabilities=False)
    _assert_equal_predictions(out, nnunet_stages["cascade"], cases)
    for case, image in zip(cases, list_images(cascade["images"])):
        label, reference = sitk.ReadImage(str(out / f"{case}.nii.gz")), sitk.ReadImage(str(image))
        assert label.GetSize() == reference.GetSize()
        assert label.GetDirection() == pytest.approx(reference.GetDirection(), abs=1e-6)
        assert label.GetOrigin() == pytest.approx(reference.GetOrigin(), abs=1e-5)

    # A second run resumes both stages.
    assert main(["predict", "--model", str(cascade["cascade"]), "--input", str(cascade["images"]),
                 "--output", str(out), "--device", "cpu", "--save-probabilities", "--no-progress"]) == 0
    assert "2 case(s): 0 predicted, 2 skipped" in capsys.readouterr().out


def test_previous_stage_label_maps_are_what_the_cascade_reads(cascade, nnunet_stages, tmp_path, capsys):
    cases = _cases(cascade["images"])
    given = tmp_path / "given"
    assert main(["predict", "--model", str(cascade["cascade"]), "--input", str(cascade["images"]),
                 "--output", str(given), "--previous-stage", str(nnunet_stages["lowres"]), "--device", "cpu",
                 "--save-probabilities", "--no-progress"]) == 0
    assert not (given / "3d_lowres").exists()  # nnU-Net's output folder (with plans.json) is not a model
    _assert_equal_predictions(given, nnunet_stages["cascade"], cases)

    # An all-background previous stage changes the cascade's input, so its probabilities.
    background = tmp_path / "background"
    background.mkdir()
    for case in cases:
        lowres = sitk.ReadImage(str(nnunet_stages["lowres"] / f"{case}.nii.gz"))
        empty = sitk.Image(lowres.GetSize(), lowres.GetPixelID())
        empty.CopyInformation(lowres)
        sitk.WriteImage(empty, str(background / f"{case}.nii.gz"))
    assert main(["predict", "--model", str(cascade["cascade"]), "--input", str(cascade["images"]),
                 "--output", str(tmp_path / "from_background"), "--previous-stage", str(background),
                 "--device", "cpu", "--save-probabilities", "--no-progress"]) == 0
    for case in cases:
        changed = np.load(tmp_path / "from_background" / f"{case}.npz")["probabilities"]
        assert np.abs(changed - np.load(given / f"{case}.npz")["probabilities"]).max() > 1e-4
    capsys.readouterr()


def test_bad_previous_stage_label_maps_fail_their_case_only(cascade, nnunet_stages, tmp_path, capsys):
    first, second = _cases(cascade["images"])
    previous = tmp_path / "previous"
    previous.mkdir()
    lowres = sitk.ReadImage(str(nnunet_stages["lowres"] / f"{second}.nii.gz"))
    sitk.WriteImage(lowres[:-4], str(previous / f"{second}.nii.gz"))  # four slices short
    out = tmp_path / "out"
    code = main(["predict", "--model", str(cascade["cascade"]), "--input", str(cascade["images"]),
                 "--output", str(out), "--previous-stage", str(previous), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"{previous / (first + '.nii.gz')}: no 3d_lowres label map for case {first}" in err
    assert f"{previous / (second + '.nii.gz')}: 3d_lowres label map shape" in err
    assert "differs from the image's" in err
    assert not list(out.glob("*.nii.gz"))

    unknown = _labels(nnunet_stages["lowres"] / f"{first}.nii.gz")
    unknown[0, 0, 0] = 9
    image = sitk.GetImageFromArray(unknown)
    image.CopyInformation(sitk.ReadImage(str(nnunet_stages["lowres"] / f"{first}.nii.gz")))
    sitk.WriteImage(image, str(previous / f"{first}.nii.gz"))
    shutil.copy(nnunet_stages["lowres"] / f"{second}.nii.gz", previous / f"{second}.nii.gz")
    assert main(["predict", "--model", str(cascade["cascade"]), "--input", str(cascade["images"]),
                 "--output", str(out), "--previous-stage", str(previous), "--device", "cpu", "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "unknown label(s) 9 in the 3d_lowres label map; the model's labels are [0, 1, 2, 3]" in captured.err
    assert "1 predicted, 0 skipped" in captured.err
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"{second}.nii.gz"]


def test_a_lowres_failure_is_reported_once_and_the_cascade_skips_that_case(cascade, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    good = list_images(cascade["images"])[0]
    shutil.copy(good, inputs / good.name)
    (inputs / "broken_0000.nii.gz").write_bytes(b"not an image" * 40)
    out = tmp_path / "out"
    assert main(["predict", "--model", str(cascade["cascade"]), "--input", str(inputs), "--output", str(out),
                 "--device", "cpu", "--no-progress"]) == 1
    err = capsys.readouterr().err
    summary = err[err.index("FAILED (1):"):]
    assert summary.count("broken:") == 1 and "broken_0000.nii.gz: cannot read image" in summary
    assert "1 predicted, 0 skipped (outputs exist; --overwrite redoes them), 1 failed" in err
    assert [p.name for p in out.glob("*.nii.gz")] == [good.name.replace("_0000", "")]


def test_cascade_without_its_previous_stage_is_refused(cascade, tmp_path, capsys):
    alone = tmp_path / "results" / cascade["cascade"].name
    shutil.copytree(cascade["cascade"], alone)
    args = ["--input", str(cascade["images"]), "--output", str(tmp_path / "out"), "--device", "cpu", "--no-progress"]
    assert main(["predict", "--model", str(alone), *args]) == 2
    err = capsys.readouterr().err
    assert "a cascade stage needs the 3d_lowres stage first" in err and "give --previous-stage" in err
    renamed = tmp_path / "my_cascade"
    alone.rename(renamed)
    assert main(["predict", "--model", str(renamed), *args]) == 2
    assert "a folder named {trainer}__{plans}__3d_lowres beside it does not exist" in capsys.readouterr().err

    assert main(["predict", "--model", str(renamed), "--previous-stage", str(tmp_path / "nowhere"), *args]) == 2
    assert f"--previous-stage {tmp_path / 'nowhere'}: no such folder" in capsys.readouterr().err


def test_previous_stage_is_refused_for_a_model_that_is_not_a_cascade_stage(cascade, tmp_path, capsys):
    assert main(["predict", "--model", str(cascade["lowres"]), "--input", str(cascade["images"]),
                 "--output", str(tmp_path / "out"), "--previous-stage", str(tmp_path), "--device", "cpu",
                 "--no-progress"]) == 2
    assert "is not a cascade stage model" in capsys.readouterr().err
