"""``medattn bench predict``: ``medattn predict`` against ``nnUNetv2_predict`` on the same model.

Both commands run as fresh processes on the same nnU-Net model, inputs and device, with
their default worker settings (nnU-Net: 3 preprocessing and 3 export processes; medattn:
2 reading and 2 writing threads), TTA on unless ``--no-tta``, alternating, ``--repeats``
times each. The table gives the median wall time of each (process start to exit: imports,
model loading, reading, prediction, writing) and the throughput ratio nnU-Net time /
medattn time (above 1: medattn is faster). The run fails unless both write identical
label maps.

Without ``--model``, the benchmark builds one in ``--workdir`` (reused when present): the
phantom (8 cases of 32 x 48 x 48 voxels), nnU-Net's plans, and ``nnUNetTrainerStock_demo``
trained for one epoch of two iterations (prediction cost does not depend on the training;
unlike the smoke trainers it allows mirroring, so TTA runs). The inputs are ``--cases``
phantom volumes of ``--shape`` voxels, unless ``--input`` is given.
"""

from __future__ import annotations

import argparse

DESCRIPTION = "medattn predict vs nnUNetv2_predict: wall time on the same model and inputs\n\n" + \
    __doc__.split("\n", 2)[2].strip().replace("``", "")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="nnU-Net training output folder (default: build one in --workdir)")
    parser.add_argument("--input", help="folder of CASE_0000.nii.gz inputs (default: generated phantom cases)")
    parser.add_argument("--cases", type=int, default=8, help="generated input cases (default: 8)")
    parser.add_argument("--shape", type=int, nargs=3, default=(48, 96, 96), metavar=("Z", "Y", "X"),
                        help="shape of the generated inputs (default: 48 96 96)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--folds", nargs="+", default=["0"], help="folds to ensemble (default: 0)")
    parser.add_argument("--no-tta", action="store_true", help="both without mirroring (--disable_tta / --no-tta)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each command (default: 2)")
    parser.add_argument("--workdir", default=None,
                        help="folder for the model, inputs and outputs, reused by the next run (default: "
                        "medattn_bench_predict in the system's temporary folder)")


def run(args) -> int:
    import os
    import shutil
    import statistics
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    import numpy as np
    import torch

    from medattn.nnunet.commands import nnunet_environment, nnunet_executable

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(args.workdir or Path(tempfile.gettempdir()) / "medattn_bench_predict").resolve()
    env = nnunet_environment(work / "raw", work / "preprocessed", work / "results")
    model = Path(args.model) if args.model else _build_model(work, env)
    inputs = Path(args.input) if args.input else _make_inputs(work / "inputs", args.cases, tuple(args.shape))
    n_cases = len(list(inputs.glob("*_0000.nii.gz")))
    tta = {"nnUNetv2_predict": ["--disable_tta"], "medattn predict": ["--no-tta"]} if args.no_tta else {}
    commands = {
        "nnUNetv2_predict": [nnunet_executable("nnUNetv2_predict_from_modelfolder"), "-i", str(inputs), "-o", "{out}",
                             "-m", str(model), "-f", *args.folds, "-device", device, "--disable_progress_bar"],
        "medattn predict": [str(Path(sys.executable).with_name("medattn")), "predict", "--model", str(model),
                            "--input", str(inputs), "--output", "{out}", "--folds", *args.folds, "--device", device,
                            "--no-progress"],
    }
    commands = {name: command + tta.get(name, []) for name, command in commands.items()}
    times: dict[str, list[float]] = {name: [] for name in commands}
    for repeat in range(args.repeats):
        for name, command in commands.items():
            out = work / "outputs" / name.split()[0]
            shutil.rmtree(out, ignore_errors=True)
            started = time.perf_counter()
            result = subprocess.run([c.replace("{out}", str(out)) for c in command], env=env,
                                    stdin=subprocess.DEVNULL, capture_output=True, text=True)
            times[name].append(time.perf_counter() - started)
            if result.returncode != 0:
                print(f"{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}", file=sys.stderr)
                return 1
            print(f"repeat {repeat + 1}/{args.repeats}: {name}: {times[name][-1]:.1f} s", flush=True)
    if not _same_outputs(work / "outputs" / "nnUNetv2_predict", work / "outputs" / "medattn", np):
        print("the two commands wrote different label maps", file=sys.stderr)
        return 1
    nnunet, medattn = (statistics.median(times[name]) for name in commands)
    cpu = f"{os.cpu_count()} CPUs" + (f", {torch.cuda.get_device_name()}" if device == "cuda" else "")
    print(f"\n{n_cases} cases of {_shape_of(inputs)} voxels, model {model.name} folds {' '.join(args.folds)}, "
          f"device {device} ({cpu}), TTA {'off' if args.no_tta else 'on'}, median of {args.repeats}\n")
    print("| command | wall time (s) | s / case |\n|---|---|---|")
    for name, seconds in (("nnUNetv2_predict", nnunet), ("medattn predict", medattn)):
        print(f"| `{name}` | {seconds:.1f} | {seconds / n_cases:.2f} |")
    print(f"\nthroughput ratio medattn / nnU-Net: {nnunet / medattn:.2f} (identical label maps)")
    return 0


def _build_model(work, env):
    """Phantom, nnU-Net plans and a one-epoch stock model in ``work`` (reused when present)."""
    from medattn.data.phantom import make_phantom_dataset
    from medattn.nnunet.commands import run_nnunet

    dataset = "Dataset990_Phantom"
    model = work / "results" / dataset / "nnUNetTrainerStock_demo__nnUNetPlans__3d_fullres"
    if (model / "fold_0" / "checkpoint_final.pth").is_file():
        return model
    print(f"building a model in {work} (phantom, plans, one-epoch training) ...", flush=True)
    make_phantom_dataset(work / "raw", n_cases=8, seed=0, dataset_id=990)
    run_nnunet("nnUNetv2_plan_and_preprocess", ["-d", 990, "-c", "3d_fullres", "-np", 2], env, timeout=3600)
    short = dict(env, MEDATTN_DEMO_EPOCHS="1", MEDATTN_DEMO_ITERATIONS="2")
    run_nnunet("nnUNetv2_train", [990, "3d_fullres", 0, "-tr", "nnUNetTrainerStock_demo", "-device", "cpu"], short,
               timeout=3600)
    return model


def _make_inputs(folder, n_cases: int, shape):
    from medattn.data.io import write_image
    from medattn.data.phantom import make_phantom_case

    for index in range(n_cases):
        path = folder / f"bench_{index:03d}_0000.nii.gz"
        if not path.is_file():
            image, _, geometry = make_phantom_case(shape, seed=1000 + index)
            write_image(image, geometry, path)
    return folder


def _shape_of(folder) -> str:
    import SimpleITK as sitk

    first = sorted(folder.glob("*_0000.nii.gz"))[0]
    return " x ".join(map(str, reversed(sitk.ReadImage(str(first)).GetSize())))


def _same_outputs(a, b, np) -> bool:
    import SimpleITK as sitk

    names = sorted(p.name for p in a.glob("*.nii.gz"))
    if not names or names != sorted(p.name for p in b.glob("*.nii.gz")):
        return False
    return all(np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(a / n))),
                              sitk.GetArrayFromImage(sitk.ReadImage(str(b / n)))) for n in names)
