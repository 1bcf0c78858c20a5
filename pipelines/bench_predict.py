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
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from medattn.devices import add_device_argument

DESCRIPTION = "medattn predict vs nnUNetv2_predict: wall time on the same model and inputs\n\n" + \
    __doc__.split("\n", 2)[2].strip().replace("``", "")

#: Table names of the two commands, in the order they run and are listed.
NNUNET, MEDATTN = "nnUNetv2_predict", "medattn predict"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="nnU-Net training output folder (default: build one in --workdir)")
    parser.add_argument("--input", help="folder of CASE_0000.nii.gz inputs (default: generated phantom cases)")
    parser.add_argument("--cases", type=int, default=8, help="generated input cases (default: 8)")
    parser.add_argument("--shape", type=int, nargs=3, default=(48, 96, 96), metavar=("Z", "Y", "X"),
                        help="shape of the generated inputs (default: 48 96 96)")
    add_device_argument(parser)
    parser.add_argument("--folds", nargs="+", default=["0"], help="folds to ensemble (default: 0)")
    parser.add_argument("--no-tta", action="store_true", help="both without mirroring (--disable_tta / --no-tta)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each command (default: 2)")
    parser.add_argument("--workdir", default=None,
                        help="folder for the model, inputs and outputs, reused by the next run (default: "
                        "medattn_bench_predict in the system's temporary folder)")


def run(args) -> int:
    """Time both commands, check that their label maps agree, print the table.

    Returns:
        0 on success; 1 when a command fails (its output goes to stderr) or the two
        commands wrote different label maps.
    """
    from medattn.nnunet.commands import nnunet_environment

    device = _resolve_device(args.device)
    work = _work_folder(args.workdir)
    env = nnunet_environment(work / "raw", work / "preprocessed", work / "results")
    model = Path(args.model) if args.model else _build_model(work, env)
    inputs = Path(args.input) if args.input else _make_inputs(work / "inputs", args.cases, tuple(args.shape))
    n_cases = len(list(inputs.glob("*_0000.nii.gz")))
    commands = _commands(model, inputs, args.folds, device, args.no_tta)
    times = _time_commands(commands, work, env, args.repeats)
    if times is None:
        return 1
    if not _same_outputs(_output_folder(work, NNUNET), _output_folder(work, MEDATTN)):
        print("the two commands wrote different label maps", file=sys.stderr)
        return 1
    medians = {name: statistics.median(seconds) for name, seconds in times.items()}
    print(f"\n{_setup_line(args, n_cases, inputs, model, device)}\n")
    print(_table(medians, n_cases))
    return 0


def _resolve_device(device: str) -> str:
    """The ``-device`` value for nnUNetv2_predict, which knows only device types."""
    from medattn.devices import resolve_device

    return resolve_device(device).type


def _work_folder(workdir: str | None) -> Path:
    # A fixed default (not a fresh temporary folder) so that a second run reuses the
    # model and inputs the first one built.
    return Path(workdir or Path(tempfile.gettempdir()) / "medattn_bench_predict").resolve()


def _output_folder(work: Path, name: str) -> Path:
    """Where command ``name`` writes: ``outputs/nnUNetv2_predict`` or ``outputs/medattn``."""
    return work / "outputs" / name.split()[0]


def _commands(model: Path, inputs: Path, folds, device: str, no_tta: bool) -> dict[str, list[str]]:
    """Command lines of both benchmarked commands, ``{out}`` standing for the output folder.

    Both get the same model, folds, inputs and device, no progress bar, and with
    ``no_tta`` each its own flag to switch mirroring off.
    """
    from medattn.nnunet.commands import nnunet_executable

    # The medattn script beside this interpreter: the one of this environment, even
    # when it is not on PATH.
    medattn = str(Path(sys.executable).with_name("medattn"))
    commands = {
        NNUNET: [nnunet_executable("nnUNetv2_predict_from_modelfolder"), "-i", str(inputs), "-o", "{out}",
                 "-m", str(model), "-f", *folds, "-device", device, "--disable_progress_bar"],
        MEDATTN: [medattn, "predict", "--model", str(model), "--input", str(inputs), "--output", "{out}",
                  "--folds", *folds, "--device", device, "--no-progress"],
    }
    if no_tta:
        commands[NNUNET].append("--disable_tta")
        commands[MEDATTN].append("--no-tta")
    return commands


def _time_commands(commands: dict[str, list[str]], work: Path, env: dict[str, str],
                   repeats: int) -> dict[str, list[float]] | None:
    """Run every command ``repeats`` times, alternating, each into a freshly emptied folder.

    Alternating (rather than all runs of one command, then the other) spreads changes in
    the machine's load over both.

    Returns:
        ``{name: wall seconds of each run}``, or None after a command failed (its name and
        the end of its output printed to stderr).
    """
    times: dict[str, list[float]] = {name: [] for name in commands}
    for repeat in range(repeats):
        for name, command in commands.items():
            out = _output_folder(work, name)
            shutil.rmtree(out, ignore_errors=True)
            seconds, result = _timed_process([part.replace("{out}", str(out)) for part in command], env)
            times[name].append(seconds)
            if result.returncode != 0:
                print(f"{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}", file=sys.stderr)
                return None
            print(f"repeat {repeat + 1}/{repeats}: {name}: {seconds:.1f} s", flush=True)
    return times


def _timed_process(command: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    """Wall seconds from process start to exit, and the finished process (output captured)."""
    started = time.perf_counter()
    result = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    return time.perf_counter() - started, result


def _setup_line(args, n_cases: int, inputs: Path, model: Path, device: str) -> str:
    """What was measured: inputs, model, device (with CPU count and GPU name), TTA, repeats."""
    cpu = f"{os.cpu_count()} CPUs"
    if device == "cuda":
        import torch

        cpu += f", {torch.cuda.get_device_name()}"
    return (f"{n_cases} cases of {_shape_of(inputs)} voxels, model {model.name} folds {' '.join(args.folds)}, "
            f"device {device} ({cpu}), TTA {'off' if args.no_tta else 'on'}, median of {args.repeats}")


def _table(medians: dict[str, float], n_cases: int) -> str:
    """The markdown table of median wall times and the throughput ratio line (the format
    docs/benchmarks.md quotes)."""
    lines = ["| command | wall time (s) | s / case |", "|---|---|---|"]
    lines += [f"| `{name}` | {medians[name]:.1f} | {medians[name] / n_cases:.2f} |" for name in (NNUNET, MEDATTN)]
    # Times of the same work, so nnU-Net's time over medattn's is medattn's relative throughput.
    ratio = medians[NNUNET] / medians[MEDATTN]
    lines += ["", f"throughput ratio medattn / nnU-Net: {ratio:.2f} (identical label maps)"]
    return "\n".join(lines)


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


def _same_outputs(a: Path, b: Path) -> bool:
    """True when both folders hold the same non-empty set of ``.nii.gz`` files with equal voxels."""
    import numpy as np
    import SimpleITK as sitk

    names = sorted(p.name for p in a.glob("*.nii.gz"))
    if not names or names != sorted(p.name for p in b.glob("*.nii.gz")):
        return False
    return all(np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(a / n))),
                              sitk.GetArrayFromImage(sitk.ReadImage(str(b / n)))) for n in names)
