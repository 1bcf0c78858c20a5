"""``medattn demo`` (``make demo``): the three user stories, end to end, on the phantom.

On a machine with nothing but this repository, the demo

1. generates the phantom dataset (:mod:`medattn.data.phantom`: CT-like, anisotropic,
   rotated and flipped grids, portal-venous contrast so that the short schedule learns
   every organ) with held-out test cases,
2. plans and preprocesses it with nnU-Net,
3. trains stock nnU-Net and nnU-Net with DSM on a short schedule (the ``_demo`` trainers),
4. predicts the held-out cases with ``medattn predict``,
5. compares both with ``medattn evaluate --compare`` (Dice, HD95, paired Wilcoxon, case
   pictures over the images),
6. explains DSM on one test case with ``medattn explain`` (its maps and Grad-CAM as
   NIfTI on the input grid, PNG and ``index.html``) and
7. takes the MONAI path: ``medattn train monai`` (DynUNet with DSM), ``medattn predict``
   and ``medattn evaluate`` on the same test cases,

then prints the paths of the HTML reports and of the explain index. Everything goes under one folder (default
``./demo_output``). A second run skips every finished step (a stamp per step, checked
together with the step's outputs); a step reruns when a step it depends on ran again,
and an interrupted training continues from its last checkpoint.

The commands are defined once, here (:func:`story_steps`): the README's user stories are
their rendering (:func:`render_story`; ``tests/pipelines/test_demo.py`` compares them), and
the demo runs exactly those, adding only options that depend on the machine or the state
of the folder (:func:`machine_options`): ``-device cpu`` without a GPU, ``-np`` for the
CPU count, ``--c``/``--resume`` to continue an interrupted training. The ``smoke``
schedule (for tests) shortens the trainings through ``MEDATTN_DEMO_EPOCHS``/``_ITERATIONS``
(read by :class:`medattn.nnunet.trainer.DemoSchedule`) and the MONAI ``--epochs`` value.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import string
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DATASET", "DATASET_ID", "SCHEDULES", "STORIES", "DemoResult", "DemoStepError", "Step",
           "machine_options", "render_story", "run_demo", "story_steps"]

DATASET_ID = 990
DATASET = f"Dataset{DATASET_ID}_Phantom"
CONFIGURATION = "3d_fullres"
TRAINERS = {"stock": "nnUNetTrainerStock_demo", "dsm": "nnUNetTrainerDSM_demo"}
#: A small DynUNet (the phantom's planned layout has four levels), trained with AdamW: SGD
#: (the default) had learnt nothing after 20 epochs of the 6 phantom cases, AdamW at 3e-3
#: reached a validation mean Dice of 0.26 in 12 (measured on the low-contrast phantom); 12
#: epochs learnt only the largest organ of the enhanced one, hence 24.
MONAI_EPOCHS = 48
MONAI_NETWORK = '{"filters": [16, 32, 64, 128]}'
#: Budgets: environment for the ``_demo`` trainers, and the MONAI path's epochs.
SCHEDULES = {
    "demo": {"env": {}, "monai_epochs": MONAI_EPOCHS},
    "smoke": {"env": {"MEDATTN_DEMO_EPOCHS": "1", "MEDATTN_DEMO_ITERATIONS": "2"}, "monai_epochs": 1},
}
#: The README's user stories, in order.
STORIES = ("setup", "train", "predict", "evaluate", "explain", "monai")
#: The test case the demo explains.
EXPLAINED_CASE = "phantom_008"
STAMPS = ".demo_steps"


@dataclass(frozen=True)
class Step:
    """One command of the demo.

    Attributes:
        key: unique name; its stamp is ``OUT/.demo_steps/{key}.done``.
        story: the README story it belongs to (one of :data:`STORIES`).
        title: what the progress line says.
        argv: the command as a user types it; ``$nnUNet_raw``, ``$nnUNet_preprocessed``,
            ``$nnUNet_results`` and ``$DEMO`` stand for the demo's folders.
        output: a file or folder that exists once the step has succeeded.
        workdir: the folder holding everything the step writes; emptied before the step
            reruns because a step it needs ran again.
        needs: keys of the steps whose outputs it reads.
        trainer: the nnU-Net trainer a training step runs (sizes its progress bar).
    """

    key: str
    story: str
    title: str
    argv: tuple[str, ...]
    output: str
    workdir: str
    needs: tuple[str, ...] = ()
    trainer: str | None = None

    @property
    def program(self) -> str:
        return self.argv[0]


def story_steps() -> list[Step]:
    """Every step of the demo, in order."""
    raw = f"$nnUNet_raw/{DATASET}"
    tests = f"{raw}/imagesTs"
    steps = [
        Step("phantom", "train", "generate the phantom dataset",
             ("python", "-m", "medattn.data.phantom", "$nnUNet_raw", "--cases", "8", "--test-cases", "6",
              "--dataset-id", str(DATASET_ID), "--contrast", "enhanced"),
             f"{raw}/dataset.json", raw),
        Step("plan", "train", "plan and preprocess with nnU-Net",
             ("nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", CONFIGURATION),
             f"$nnUNet_preprocessed/{DATASET}/nnUNetPlans.json", f"$nnUNet_preprocessed/{DATASET}", ("phantom",)),
    ]
    for name, trainer in TRAINERS.items():
        steps.append(Step(f"train_{name}", "train", f"train {trainer}",
                          ("nnUNetv2_train", str(DATASET_ID), CONFIGURATION, "0", "-tr", trainer),
                          f"{_model_dir(trainer)}/fold_0/checkpoint_final.pth", f"{_model_dir(trainer)}/fold_0",
                          ("plan",), trainer))
    for name, trainer in TRAINERS.items():
        steps.append(Step(f"predict_{name}", "predict", f"predict the test cases with {trainer}",
                          ("medattn", "predict", "--model", _model_dir(trainer), "--input", tests,
                           "--output", f"$DEMO/predictions/{name}", "--no-tta"),
                          f"$DEMO/predictions/{name}", f"$DEMO/predictions/{name}", (f"train_{name}",)))
    steps += [
        Step("evaluate", "evaluate", "evaluate DSM against stock (paired)",
             ("medattn", "evaluate", "--pred", "$DEMO/predictions/dsm", "--gt", f"{raw}/labelsTs",
              "--labels", f"{raw}/dataset.json", "--compare", "$DEMO/predictions/stock", "--images", tests,
              "--out", "$DEMO/evaluation"),
             "$DEMO/evaluation/report.html", "$DEMO/evaluation", ("predict_stock", "predict_dsm")),
        Step("explain", "explain", f"explain DSM's attention on {EXPLAINED_CASE}",
             ("medattn", "explain", "--model", _model_dir(TRAINERS["dsm"]), "--input",
              f"{tests}/{EXPLAINED_CASE}_0000.nii.gz", "--out", "$DEMO/explain", "--gradcam", "1", "--no-tta"),
             "$DEMO/explain/index.html", "$DEMO/explain", ("train_dsm",)),
        Step("monai_train", "monai", "train MONAI DynUNet with DSM",
             ("medattn", "train", "monai", "--data", raw, "--network", "dynunet", "--attention", "dsm",
              "--network-kwargs", MONAI_NETWORK, "--optimizer", "adamw", "--lr", "0.003",
              "--epochs", str(MONAI_EPOCHS), "--val-every", "4",
              "--out", "$DEMO/monai/dynunet_dsm"),
             "$DEMO/monai/dynunet_dsm/checkpoint_last.pt", "$DEMO/monai/dynunet_dsm", ("phantom",)),
        Step("monai_predict", "monai", "predict the test cases with the MONAI checkpoint",
             ("medattn", "predict", "--model", "$DEMO/monai/dynunet_dsm", "--input", tests,
              "--output", "$DEMO/predictions/monai_dsm", "--no-tta"),
             "$DEMO/predictions/monai_dsm", "$DEMO/predictions/monai_dsm", ("monai_train",)),
        Step("monai_evaluate", "monai", "evaluate the MONAI predictions",
             ("medattn", "evaluate", "--pred", "$DEMO/predictions/monai_dsm", "--gt", f"{raw}/labelsTs",
              "--labels", f"{raw}/dataset.json", "--out", "$DEMO/evaluation_monai"),
             "$DEMO/evaluation_monai/report.html", "$DEMO/evaluation_monai", ("monai_predict",)),
    ]
    return steps


def _model_dir(trainer: str) -> str:
    return f"$nnUNet_results/{DATASET}/{trainer}__nnUNetPlans__{CONFIGURATION}"


#: The lines that precede the stories: the demo's folder, nnU-Net's folders, medattn's trainers.
SETUP = """\
export DEMO=$PWD/demo_output        # the folder `make demo` fills; any folder works
export nnUNet_raw=$DEMO/nnUNet_raw nnUNet_preprocessed=$DEMO/nnUNet_preprocessed nnUNet_results=$DEMO/nnUNet_results
eval "$(medattn nnunet env)"        # lets nnU-Net find medattn's trainers"""


def render_story(story: str) -> str:
    """The shell lines of one README story (``setup`` gives :data:`SETUP`).

    Raises:
        ValueError: for an unknown story.
    """
    if story not in STORIES:
        raise ValueError(f"unknown story {story!r}; choose one of {STORIES}")
    if story == "setup":
        return SETUP
    return "\n".join(_render_argv(step.argv) for step in story_steps() if step.story == story)


def _render_argv(argv, width: int = 100) -> str:
    """One shell line, continued with a backslash before an option that would pass ``width``."""
    words = [word if word.startswith("$") and "'" not in word and " " not in word else shlex.quote(word)
             for word in argv]
    chunks: list[str] = []  # an option with its values stays on one line
    for word in words:
        if not chunks or word.startswith("-"):
            chunks.append(word)
        else:
            chunks[-1] += " " + word
    lines = [chunks[0]]
    for chunk in chunks[1:]:
        if len(lines[-1]) + 1 + len(chunk) > width:
            lines[-1] += " \\"
            lines.append("    " + chunk)
        else:
            lines[-1] += " " + chunk
    return "\n".join(lines)


def machine_options(step: Step, device: str, n_proc: int, folders: dict[str, str]) -> list[str]:
    """Options the demo adds to ``step`` for this machine and the folder's state: ``-device``
    for nnU-Net without a GPU, ``-np N`` for the CPU count, ``--c`` / ``--resume`` to
    continue an interrupted training, ``--device`` for medattn's predict and explain."""
    if step.program == "nnUNetv2_plan_and_preprocess":
        return ["-np", str(n_proc)]
    workdir = Path(_expand(step.workdir, folders))
    if step.program == "nnUNetv2_train":
        extra = [] if device == "cuda" else ["-device", device]
        return extra + (["--c"] if (workdir / "checkpoint_latest.pth").is_file() else [])
    if step.argv[:3] == ("medattn", "train", "monai"):
        return ["--device", device] + (["--resume"] if (workdir / "checkpoint_last.pt").is_file() else [])
    if step.argv[:2] in (("medattn", "predict"), ("medattn", "explain")):
        return ["--device", device]
    return []


def _expand(text: str, folders: dict[str, str]) -> str:
    return string.Template(text).substitute(folders)


def _apply_schedule(argv: list[str], schedule: str) -> list[str]:
    if argv[:3] == ["medattn", "train", "monai"]:
        index = argv.index("--epochs") + 1
        argv = [*argv[:index], str(SCHEDULES[schedule]["monai_epochs"]), *argv[index + 1:]]
    return argv


@dataclass
class DemoResult:
    """What :func:`run_demo` did.

    Attributes:
        out: the demo folder.
        report: the HTML report of the nnU-Net comparison (DSM vs stock).
        monai_report: the HTML report of the MONAI path.
        explain_index: ``index.html`` of ``medattn explain`` on one test case.
        ran: the steps run now, with their seconds.
        skipped: keys of the steps found finished.
    """

    out: Path
    report: Path
    monai_report: Path
    explain_index: Path
    ran: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


class DemoStepError(RuntimeError):
    """A step failed; the message holds the command and where its log is."""


def run_demo(out: str | os.PathLike = "demo_output", *, schedule: str = "demo", device: str = "auto",
             progress: bool = True) -> DemoResult:
    """Run every step of :func:`story_steps` that is not finished yet.

    Args:
        out: the demo folder (created).
        schedule: "demo" (``make demo``) or "smoke" (one-epoch trainings, for tests).
        device: "auto" (CUDA if available, else CPU), "cpu" or "cuda".
        progress: show progress bars.

    Returns:
        A :class:`DemoResult`.

    Raises:
        DemoStepError: when a step fails, naming the command and its log file.
        ValueError: for an unknown schedule or device.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {sorted(SCHEDULES)}")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    device = _resolve_device(device)
    folders = {"DEMO": str(out), "nnUNet_raw": str(out / "nnUNet_raw"),
               "nnUNet_preprocessed": str(out / "nnUNet_preprocessed"), "nnUNet_results": str(out / "nnUNet_results")}
    steps = story_steps()
    result = DemoResult(out, out / "evaluation" / "report.html", out / "evaluation_monai" / "report.html",
                        out / "explain" / "index.html")
    n_proc = max(1, min(4, os.cpu_count() or 1))
    for number, step in enumerate(steps, start=1):
        header = f"[{number}/{len(steps)}] {step.title}"
        inputs_changed = any(key in result.ran for key in step.needs)
        if not inputs_changed and _finished(step, schedule, out, folders):
            print(f"{header}: done already, skipped", flush=True)
            result.skipped.append(step.key)
            continue
        if inputs_changed or _stamp(step, out).is_file():
            # New inputs or another command: start afresh. Without a stamp (an interrupted
            # run) the step resumes from what it has written.
            _clean(step, out, folders)
        argv = _apply_schedule([_expand(word, folders) for word in step.argv], schedule)
        argv += machine_options(step, device, n_proc, folders)
        print(f"{header}\n  $ {shlex.join(argv)}", flush=True)
        started = time.perf_counter()
        if step.program == "medattn":
            _run_medattn(step, argv)
        else:
            _run_subprocess(step, argv, out, folders, n_proc, schedule, progress)
        result.ran[step.key] = time.perf_counter() - started
        from medattn.data.io import write_text_atomic

        write_text_atomic(_stamp(step, out), _stamp_text(step, schedule))
    return result


def _resolve_device(device: str) -> str:
    """The ``-device`` value for nnU-Net's commands, which know only device types."""
    from medattn.devices import resolve_device

    if device not in ("auto", "cpu", "cuda", "mps"):
        raise ValueError(f"device must be auto, cpu, cuda or mps, got {device!r}")
    return resolve_device(device).type


def _stamp(step: Step, out: Path) -> Path:
    return out / STAMPS / f"{step.key}.done"


def _stamp_text(step: Step, schedule: str) -> str:
    # Machine options (--c, -device, -np) do not change what a step produces; the schedule does.
    return f"{shlex.join(step.argv)}\nschedule: {schedule}\n"


def _finished(step: Step, schedule: str, out: Path, folders: dict[str, str]) -> bool:
    stamp = _stamp(step, out)
    if not stamp.is_file() or stamp.read_text(encoding="utf-8") != _stamp_text(step, schedule):
        return False
    return Path(_expand(step.output, folders)).exists()


def _clean(step: Step, out: Path, folders: dict[str, str]) -> None:
    """Empty a step's folder before it reruns on new inputs or with another command (stale
    predictions would be kept by ``medattn predict``'s resume, a stale checkpoint continued
    by ``--c``)."""
    _stamp(step, out).unlink(missing_ok=True)
    workdir = Path(_expand(step.workdir, folders))
    if workdir.is_dir() and workdir.resolve().is_relative_to(out):
        shutil.rmtree(workdir)


def _run_medattn(step: Step, argv: list[str]) -> None:
    """medattn commands run in this process (their own progress bars show)."""
    from medattn.cli import main

    code = main(argv[1:])
    if code != 0:
        raise DemoStepError(f"{shlex.join(argv)} exited with {code} (see its messages above)")


def _run_subprocess(step: Step, argv: list[str], out: Path, folders: dict[str, str], n_proc: int, schedule: str,
                    progress: bool) -> None:
    """nnU-Net's tools (and the phantom generator) in a subprocess, logged to
    ``OUT/logs/{key}.log``; the progress bar follows the log (epochs for training, seconds
    otherwise)."""
    from tqdm.auto import tqdm

    from medattn.nnunet.commands import nnunet_environment, nnunet_executable

    env = nnunet_environment(folders["nnUNet_raw"], folders["nnUNet_preprocessed"], folders["nnUNet_results"],
                             n_proc=n_proc)
    env.update(SCHEDULES[schedule]["env"], PYTHONUNBUFFERED="1")
    command = [sys.executable, *argv[1:]] if step.program == "python" else [nnunet_executable(argv[0]), *argv[1:]]
    log = out / "logs" / f"{step.key}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    epochs = _trainer_epochs(step.trainer, env) if step.trainer else None
    bar_format = None if epochs else "  {desc}: running for {elapsed}{postfix}"
    with open(log, "w") as stream, tqdm(total=epochs, unit="epoch", disable=not progress, desc=f"  {step.key}",
                                        bar_format=bar_format, dynamic_ncols=True) as bar:
        process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=stream,
                                   stderr=subprocess.STDOUT)
        try:
            while process.poll() is None:
                time.sleep(1.0)
                _follow(bar, log, epochs)
        except BaseException:
            process.terminate()
            process.wait(timeout=60)
            raise
        if epochs and process.returncode == 0:
            bar.update(epochs - bar.n)
    if process.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").strip().splitlines()[-20:])
        raise DemoStepError(f"{shlex.join(argv)} exited with {process.returncode}; log: {log}\n{tail}")


def _trainer_epochs(trainer: str, env: dict[str, str]) -> int | None:
    """Epochs of a ``_demo`` trainer under ``env``; None for other trainers."""
    if not trainer.endswith("_demo"):
        return None
    from medattn.nnunet.trainer import DemoSchedule

    return int(env.get("MEDATTN_DEMO_EPOCHS", DemoSchedule.demo_epochs))


#: nnU-Net's log line that starts epoch k (0-based): "2026-01-01 10:00:00.000000: Epoch 3".
_EPOCH = re.compile(r"^\S+ \S+: Epoch (\d+)\s*$", re.MULTILINE)
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ")


def _follow(bar, log: Path, epochs: int | None) -> None:
    """Move the bar to the log's last epoch, and show the log's last line."""
    text = log.read_text(errors="replace")
    last = next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")
    bar.set_postfix_str(_TIMESTAMP.sub("", last)[-70:], refresh=False)
    if epochs:
        started = [int(m) for m in _EPOCH.findall(text)]
        done = max(started, default=0)  # epoch k has started, so k epochs are done
        bar.update(max(0, min(done, epochs) - bar.n))
    bar.refresh()
