"""``medattn bench nnunet``: stock nnU-Net against the DSM, SNA and DIA trainers on real MRI.

Task04_Hippocampus of the Medical Segmentation Decathlon (``--data``, read in place) is
converted with ``nnUNetv2_convert_MSD_dataset`` and planned and preprocessed for
``3d_fullres`` with ``nnUNetv2_plan_and_preprocess`` under ``--work-dir``. One fixed split
(``--val-cases`` validation cases drawn with ``--seed``, the other cases for training) is
written as ``splits_final.json`` (fold 0). Each trainer (``nnUNetTrainer<Name>_bench``,
:class:`medattn.nnunet.trainer.BenchSchedule`) is trained on the same short schedule
with ``nnUNetv2_train ... -device cpu`` (or ``--device``); each training step is timed
inside the trainer. The validation cases are then predicted with nnU-Net's predictor
(no test-time mirroring), one case at a time, timed, and scored with
:func:`medattn.evaluation.evaluate_folders` (Dice and HD95 per class; paired comparison
with stock: mean difference, Wilcoxon p, wins/ties/losses).

Steps already done in ``--work-dir`` (conversion, preprocessing, a finished training with
its step times) are reused, so an interrupted run resumes; ``--retrain`` trains again.
Outputs: ``results.json`` and ``results.md`` in ``--work-dir`` (the table is also printed).

Example:
    medattn bench nnunet --work-dir /tmp/bench_nnunet --epochs 4 --iterations 50 --val-cases 30
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

from medattn.devices import add_device_argument

DESCRIPTION = __doc__.split("\n", 1)[1].strip().replace("``", "").replace(":class:", "").replace(":func:", "")
DESCRIPTION = "stock nnU-Net vs DSM/SNA/DIA trainers on Task04_Hippocampus (real MRI)\n\n" + DESCRIPTION

DATASET_ID = 4
DATASET_NAME = "Dataset004_Hippocampus"
CONFIGURATION = "3d_fullres"
REFERENCE = "Stock"
DEFAULT_TRAINERS = ("Stock", "DSM", "SNA", "DIA")
CLASS_NAMES = {1: "anterior", 2: "posterior"}
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "Task04_Hippocampus"
PREDICT_WORKER = "medattn.pipelines.bench_nnunet"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=str(DEFAULT_DATA),
                        help="MSD Task04_Hippocampus folder, read in place (default: %(default)s)")
    parser.add_argument("--work-dir", default="/tmp/bench_nnunet",
                        help="nnU-Net raw/preprocessed/results and predictions go here (default: %(default)s)")
    parser.add_argument("--trainers", nargs="+", default=list(DEFAULT_TRAINERS), metavar="NAME",
                        help="trainers nnUNetTrainer<NAME>_bench to run; Stock is always added "
                        "(default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per trainer (default: 4)")
    parser.add_argument("--iterations", type=int, default=50, help="training iterations per epoch (default: 50)")
    parser.add_argument("--val-iterations", type=int, default=2,
                        help="nnU-Net's pseudo-Dice validation iterations per epoch (default: 2)")
    parser.add_argument("--val-cases", type=int, default=30, help="validation cases of the split (default: 30)")
    parser.add_argument("--train-cases", type=int, default=0,
                        help="training cases of the split; 0: every case not in validation (default: 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default: 0)")
    add_device_argument(parser, default="cpu", what="nnU-Net's training and prediction")
    parser.add_argument("--n-proc-da", type=int, default=1,
                        help="nnU-Net data-augmentation worker processes (default: 1)")
    parser.add_argument("--retrain", action="store_true", help="train again even if a finished training exists")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed per nnU-Net command")
    parser.add_argument("--steps-only", action="store_true",
                        help="only plan Task04 and time one training step of every trainer against stock, "
                        "interleaved (goal table: step time <= 1.10x, peak memory <= 1.15x); --trainers defaults "
                        f"then to every trainer at its default position: {' '.join(DEFAULT_POSITION_TRAINERS)}")
    parser.add_argument("--timing-steps", type=int, default=10,
                        help="interleaved rounds of --steps-only (default: 10)")


# --- pure parts (tested) ------------------------------------------------------------------


def choose_split(cases: Sequence[str], val_cases: int, train_cases: int = 0, seed: int = 0) -> dict[str, list[str]]:
    """A fixed, seeded train/validation split of ``cases``.

    The validation cases are drawn first, so that changing ``train_cases`` keeps the
    validation set. The result does not depend on the order of ``cases``.

    Args:
        cases: case identifiers (unique).
        val_cases: number of validation cases (>= 1).
        train_cases: number of training cases; 0 takes every remaining case.
        seed: seed of ``numpy.random.default_rng``.

    Returns:
        ``{"train": [...], "val": [...]}``, both sorted: one fold of nnU-Net's
        ``splits_final.json``.

    Raises:
        ValueError: for duplicate cases or counts that do not fit.
    """
    import numpy as np

    ordered = sorted(cases)
    if len(set(ordered)) != len(ordered):
        raise ValueError(f"duplicate case identifiers in {len(ordered)} cases")
    if val_cases < 1:
        raise ValueError(f"val_cases must be at least 1, got {val_cases}")
    if train_cases < 0:
        raise ValueError(f"train_cases must be non-negative, got {train_cases}")
    available = len(ordered) - val_cases
    if available < 1 or train_cases > available:
        raise ValueError(
            f"cannot split {len(ordered)} cases into {val_cases} validation and "
            f"{train_cases or 'the remaining'} training cases"
        )
    permutation = np.random.default_rng(seed).permutation(len(ordered))
    val = sorted(ordered[i] for i in permutation[:val_cases])
    rest = [ordered[i] for i in permutation[val_cases:]]
    train = sorted(rest[: train_cases or available])
    return {"train": train, "val": val}


def timing_summary(seconds: Sequence[float], skip: int = 1) -> dict[str, float]:
    """Median, mean and count of timings, leaving out the first ``skip`` (warm-up).

    Raises:
        ValueError: if no timing is left after ``skip``.
    """
    import numpy as np

    kept = np.asarray(seconds, dtype=float)[skip:]
    if kept.size == 0:
        raise ValueError(f"no timings left after skipping {skip} of {len(seconds)}")
    return {"median": float(np.median(kept)), "mean": float(kept.mean()), "n": int(kept.size)}


def compare_to_reference(metrics, reference_metrics, labels: Mapping[int, str] = CLASS_NAMES):
    """Paired comparison of a trainer's per-case metrics with the reference's.

    Args:
        metrics, reference_metrics: long tables (``case, label, dice, hd95, ...``) as in
            :attr:`medattn.evaluation.EvaluationResult.metrics`, on the same cases.
        labels: scored label values to names.

    Returns:
        :func:`medattn.evaluation.stats.paired_comparison` of A = ``metrics`` against
        B = ``reference_metrics`` for Dice and HD95 (wins are A's).
    """
    from medattn.evaluation.stats import paired_comparison

    return paired_comparison(metrics, reference_metrics, list(labels), dict(labels), metrics=("dice", "hd95"))


def _fmt(value: float | None, digits: int, sign: bool = False) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _mean_std(summary: Mapping, metric: str, label: int, digits: int) -> str:
    stats = summary[metric][label]
    return f"{_fmt(stats['mean'], digits)} ± {_fmt(stats['std'], digits)}"


def format_tables(results: Mapping[str, Mapping], labels: Mapping[int, str] = CLASS_NAMES) -> str:
    """Markdown tables of the benchmark results.

    Args:
        results: trainer name to its record: ``params`` (int), ``step`` and ``infer``
            (:func:`timing_summary` dicts, seconds), ``summary`` (``{"dice"|"hd95": {label:
            {"mean", "std", "n"}}}``) and, except for the reference, ``paired``
            (``{"dice"|"hd95": {label: {"mean_diff", "p_value", "wins", "ties", "losses"}}}``).
            The reference (:data:`REFERENCE`) must be present.
        labels: scored label values to names.

    Returns:
        Two markdown tables: accuracy and cost; then the paired differences against the
        reference.

    Raises:
        ValueError: if the reference is missing.
    """
    if REFERENCE not in results:
        raise ValueError(f"results hold no {REFERENCE!r} entry (have {sorted(results)})")
    ref = results[REFERENCE]
    head = ["trainer"] + [f"Dice {n}" for n in labels.values()] + [f"HD95 {n} (mm)" for n in labels.values()]
    head += ["params", "params vs stock", "step s (median)", "step vs stock", "infer s/case (median)", "infer vs stock"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, record in results.items():
        cells = [name]
        cells += [_mean_std(record["summary"], "dice", k, 3) for k in labels]
        cells += [_mean_std(record["summary"], "hd95", k, 2) for k in labels]
        cells += [
            f"{record['params']:,}",
            f"{(record['params'] / ref['params'] - 1) * 100:+.2f} %",
            _fmt(record["step"]["median"], 3),
            f"{record['step']['median'] / ref['step']['median']:.2f}x",
            _fmt(record["infer"]["median"], 3),
            f"{record['infer']['median'] / ref['infer']['median']:.2f}x",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Paired against {REFERENCE} (A − {REFERENCE}; Wilcoxon signed-rank, two-sided; "
              "win = higher Dice / lower HD95):", ""]
    head = ["trainer", "class", "Dice diff", "Dice p", "Dice W/T/L", "HD95 diff (mm)", "HD95 p", "HD95 W/T/L"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, record in results.items():
        if name == REFERENCE:
            continue
        for k, class_name in labels.items():
            cells = [name, class_name]
            for metric, digits in (("dice", 4), ("hd95", 2)):
                row = record["paired"][metric][k]
                cells += [_fmt(row["mean_diff"], digits, sign=True), _fmt(row["p_value"], 3),
                          f"{row['wins']}/{row['ties']}/{row['losses']}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --- training-step cost (--steps-only) ---------------------------------------------------


def trainer_step_costs(trainers: Mapping[str, str], plans_file: Path, configuration: str, in_channels: int,
                       num_classes: int, device: str, steps: int) -> dict[str, dict]:
    """Step time and peak memory of each trainer's network, side by side.

    Each network is built as nnU-Net builds it for training (the trainer class's
    ``build_network_architecture`` on the plans, deep supervision on), and all are timed in
    interleaved rounds by :func:`medattn.pipelines.bench_monai.interleaved_step_costs` on
    one random batch of the configuration's batch and patch size.

    Args:
        trainers: name in the table to trainer class name.
        plans_file: ``nnUNetPlans.json``.
        configuration: e.g. "3d_fullres".
        in_channels, num_classes: of the dataset.
        device: a ``--device`` value.
        steps: timed rounds.
    """
    import json

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from medattn.nnunet.catalog import get_trainer_class
    from medattn.pipelines.bench_monai import interleaved_step_costs

    plans = PlansManager(json.loads(Path(plans_file).read_text(encoding="utf-8")))
    config = plans.get_configuration(configuration)
    networks = {name: get_trainer_class(trainer).build_network_architecture(plans, config, in_channels, num_classes, True)
                for name, trainer in trainers.items()}
    shape = (config.batch_size, in_channels, *config.patch_size)
    costs = interleaved_step_costs(networks, shape, num_classes, device, steps, seed=0)
    for name, network in networks.items():
        costs[name]["parameters"] = sum(p.numel() for p in network.parameters())
    return costs


#: Goals of issue 15 for an nnU-Net training step, as ratios to stock.
STEP_GOALS = {"step_s": 1.10, "peak_bytes": 1.15}
#: Every medattn trainer at its block's default position (``--steps-only``'s default).
DEFAULT_POSITION_TRAINERS = ("DSM", "SNA", "SNAIdentity", "DIA", "DIAIdentity", "DIALight", "DIASE", "SE", "ECA",
                             "CBAM", "GC")


def step_goal_table(costs: Mapping[str, Mapping], reference: str = REFERENCE) -> str:
    """Markdown: per trainer its step time and peak memory against stock, with the goals."""
    base = costs[reference]
    lines = ["| trainer | params | s / step | step ×stock | goal ≤ 1.10 | peak MiB | memory ×stock | goal ≤ 1.15 |",
             "|---|---|---|---|---|---|---|---|"]
    for name, cost in costs.items():
        step = cost["step_s"] / base["step_s"]
        memory = cost["peak_bytes"] / base["peak_bytes"] if base.get("peak_bytes") else math.nan
        lines.append(
            f"| {name} | {cost['parameters']:,} | {cost['step_s']:.3f} | {step:.3f} | "
            f"{'pass' if step <= STEP_GOALS['step_s'] else 'fail'} | {cost['peak_bytes'] / 2**20:.0f} | "
            f"{memory:.3f} | {'pass' if memory <= STEP_GOALS['peak_bytes'] else 'fail'} |")
    return "\n".join(lines) + "\n"


def _steps_only(args, work: Path, env: dict) -> int:
    """Plan Task04 (no preprocessing, no training) and time every trainer's step against stock."""
    from medattn.data.io import write_json_atomic, write_text_atomic

    chosen = args.trainers if args.trainers != list(DEFAULT_TRAINERS) else list(DEFAULT_POSITION_TRAINERS)
    names = [REFERENCE] + [t for t in dict.fromkeys(chosen) if t != REFERENCE]
    from medattn.nnunet.catalog import get_trainer_class

    # the stock network: a trainer class without attention, the schedule is irrelevant here
    trainers = {name: "nnUNetTrainerStock_bench" if name == REFERENCE else f"nnUNetTrainer{name}" for name in names}
    for trainer in trainers.values():
        get_trainer_class(trainer)  # a clear error for an unknown name, before planning
    plans = _prepare_dataset(Path(args.data), work, env, args.timeout, preprocess=False)
    loads = {"start": _load_average()}
    costs = trainer_step_costs(trainers, plans / "nnUNetPlans.json", CONFIGURATION, 1, len(CLASS_NAMES) + 1,
                               args.device, args.timing_steps)
    loads["end"] = _load_average()
    import torch

    header = (f"nnU-Net {CONFIGURATION} training step (forward, deep-supervised DiceCE, backward, AdamW) on the "
              f"Task04 plans, {args.timing_steps} interleaved rounds (median), device {args.device}, "
              f"{torch.get_num_threads()} threads; load averages {loads}\n\n")
    text = header + step_goal_table(costs)
    write_json_atomic(work / "steps.json", {"costs": costs, "loads": loads, "timing_steps": args.timing_steps})
    write_text_atomic(work / "steps.md", text)
    print(text)
    return 0


# --- pipeline steps -----------------------------------------------------------------------


def _prepare_dataset(data: Path, work: Path, env: dict, timeout: float, preprocess: bool = True) -> Path:
    """Convert (MSD -> nnU-Net raw) and plan/preprocess unless already done (with
    ``preprocess=False``: plan only); returns the preprocessed dataset folder."""
    from medattn.nnunet.commands import run_nnunet

    if not (data / "dataset.json").is_file() or not (data / "imagesTr").is_dir():
        raise ValueError(f"{data}: not an MSD task folder (needs dataset.json and imagesTr/)")
    raw = work / "raw" / DATASET_NAME
    if not (raw / "dataset.json").is_file():
        # The converter insists on imagesTs/ and on a folder named Task04_<name>; the data is
        # read-only, so stage links to it with an empty imagesTs/.
        staged = work / "msd_source" / "Task04_Hippocampus"
        (staged / "imagesTs").mkdir(parents=True, exist_ok=True)
        for name in ("imagesTr", "labelsTr", "dataset.json"):
            link = staged / name
            if not link.exists():
                link.symlink_to((data / name).resolve())
        run_nnunet("nnUNetv2_convert_MSD_dataset", ["-i", staged, "-np", env["nnUNet_def_n_proc"]], env,
                   timeout=timeout, log_file=work / "logs" / "convert.log")
    preprocessed = work / "preprocessed" / DATASET_NAME
    done = (preprocessed / "nnUNetPlans.json").is_file() and (
        not preprocess or (preprocessed / "nnUNetPlans_3d_fullres").is_dir())
    if not done:
        run_nnunet("nnUNetv2_plan_and_preprocess",
                   ["-d", DATASET_ID, "-c", CONFIGURATION, "-np", env["nnUNet_def_n_proc"],
                    "--verify_dataset_integrity", *([] if preprocess else ["--no_pp"])],
                   env, timeout=timeout, log_file=work / "logs" / "plan_and_preprocess.log")
    return preprocessed


def _write_split(preprocessed: Path, raw: Path, args) -> dict[str, list[str]]:
    from medattn.data.io import case_name, list_images, write_json_atomic

    cases = [case_name(p) for p in list_images(raw / "labelsTr")]
    split = choose_split(cases, args.val_cases, args.train_cases, args.seed)
    write_json_atomic(preprocessed / "splits_final.json", [split])
    return split


def _train(trainer: str, work: Path, env: dict, args) -> dict:
    """Train ``nnUNetTrainer<trainer>_bench`` on fold 0 unless a finished run exists;
    returns its step-time record."""
    import json
    import shutil

    from medattn.nnunet.commands import run_nnunet
    from medattn.nnunet.trainer import BENCH_STEP_TIMES_FILE

    folder = _model_folder(work, trainer)
    record_file = folder / "fold_0" / BENCH_STEP_TIMES_FILE
    if record_file.is_file() and not args.retrain:
        record = json.loads(record_file.read_text(encoding="utf-8"))
        expected = (args.epochs, args.iterations)
        if (record["num_epochs"], record["num_iterations_per_epoch"]) == expected:
            return record
    if folder.exists():
        shutil.rmtree(folder)
    run_nnunet("nnUNetv2_train",
               [DATASET_ID, CONFIGURATION, 0, "-tr", f"nnUNetTrainer{trainer}_bench", "-device", args.device],
               env, timeout=args.timeout, log_file=work / "logs" / f"train_{trainer}.log")
    return json.loads(record_file.read_text(encoding="utf-8"))


def _model_folder(work: Path, trainer: str) -> Path:
    return work / "results" / DATASET_NAME / f"nnUNetTrainer{trainer}_bench__nnUNetPlans__{CONFIGURATION}"


def _predict(trainer: str, work: Path, val_cases: Sequence[str], env: dict, args) -> list[float]:
    """Predict the validation cases in a subprocess (nnU-Net's worker pools need one);
    returns the seconds per case."""
    import json
    import subprocess
    import sys

    out_dir = work / "predictions" / trainer
    timings = work / "predictions" / f"{trainer}_seconds.json"
    images = [str(work / "raw" / DATASET_NAME / "imagesTr" / f"{case}_0000.nii.gz") for case in val_cases]
    command = [sys.executable, "-m", PREDICT_WORKER, "--predict-worker", str(_model_folder(work, trainer)),
               str(out_dir), str(timings), args.device, *images]
    result = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=args.timeout)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    (work / "logs" / f"predict_{trainer}.log").write_text(result.stdout + result.stderr, encoding="utf-8")
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
        raise RuntimeError(f"prediction with {trainer} failed (exit {result.returncode}):\n{tail}")
    return json.loads(timings.read_text(encoding="utf-8"))["seconds"]


def _predict_worker(model_folder: str, out_dir: str, timings_file: str, device: str, images: Sequence[str]) -> None:
    """Predict ``images`` one at a time with the fold-0 final checkpoint, no mirroring;
    time each case (preprocessing, sliding window, resampling; file I/O excluded)."""
    import time

    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from medattn.data.io import atomic_write, write_json_atomic

    predictor = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=device != "cpu",
                                device=torch.device(device), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model_folder, use_folds=(0,), checkpoint_name="checkpoint_final.pth")
    io = SimpleITKIO()
    seconds = []
    # the first case runs twice: once untimed to warm up allocators and kernels
    for index, image in enumerate([images[0], *images]):
        data, properties = io.read_images([image])
        start = time.perf_counter()
        segmentation = predictor.predict_single_npy_array(data, properties, None, None, False)
        elapsed = time.perf_counter() - start
        if index == 0:
            continue
        seconds.append(elapsed)
        case = Path(image).name.replace("_0000.nii.gz", "")
        with atomic_write(Path(out_dir) / f"{case}.nii.gz") as tmp:
            io.write_seg(segmentation, str(tmp), properties)
    write_json_atomic(timings_file, {"seconds": seconds, "torch_threads": torch.get_num_threads()})


def _evaluate(trainer: str, work: Path, gt_dir: Path, reference_metrics):
    from medattn.evaluation import evaluate_folders

    result = evaluate_folders(work / "predictions" / trainer, gt_dir, labels=CLASS_NAMES, progress=False,
                              out_dir=work / "evaluation" / trainer)
    summary = {
        metric: {int(row["label"]): {"mean": row[f"{metric}_mean"], "std": row[f"{metric}_std"],
                                     "n": int(row[f"{metric}_n"])}
                 for _, row in result.per_class.iterrows()}
        for metric in ("dice", "hd95")
    }
    paired = None
    if reference_metrics is not None:
        table = compare_to_reference(result.metrics, reference_metrics)
        paired = {metric: {int(row["label"]): {key: row[key] for key in ("mean_diff", "p_value", "wins", "ties",
                                                                         "losses", "n")}
                           for _, row in table[(table["metric"] == metric) & (table["label"] != "all")].iterrows()}
                  for metric in ("dice", "hd95")}
    return result.metrics, summary, paired


def _validation_ground_truth(work: Path, val_cases: Sequence[str]) -> Path:
    """A folder of links to the validation labels only (every file in it is scored)."""
    gt_dir = work / "gt_val"
    gt_dir.mkdir(parents=True, exist_ok=True)
    for old in gt_dir.iterdir():
        old.unlink()
    for case in val_cases:
        (gt_dir / f"{case}.nii.gz").symlink_to(work / "raw" / DATASET_NAME / "labelsTr" / f"{case}.nii.gz")
    return gt_dir


def _load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def run(args) -> int:
    import json
    import time

    from tqdm import tqdm

    _check_arguments(args)
    trainers = [REFERENCE] + [t for t in dict.fromkeys(args.trainers) if t != REFERENCE]
    work = Path(args.work_dir).resolve()
    env = _environment(work, args)
    if args.steps_only:
        return _steps_only(args, work, env)
    started = time.time()
    loads = {"start": _load_average()}
    preprocessed = _prepare_dataset(Path(args.data), work, env, args.timeout)
    split = _write_split(preprocessed, work / "raw" / DATASET_NAME, args)
    gt_dir = _validation_ground_truth(work, split["val"])

    results, reference_metrics = {}, None
    for trainer in tqdm(trainers, desc="trainers", unit="trainer"):
        results[trainer], metrics = _bench_trainer(trainer, work, env, args, split, gt_dir, reference_metrics, loads)
        if trainer == REFERENCE:
            reference_metrics = metrics
    text = _write_results(work, args, split, loads, results, time.time() - started)
    print(text)
    print(json.dumps({"validation cases": split["val"]}))
    return 0


def _check_arguments(args) -> None:
    for name in ("epochs", "iterations", "val_iterations", "n_proc_da"):
        if getattr(args, name) < (0 if name == "n_proc_da" else 1):
            raise ValueError(f"--{name.replace('_', '-')} is out of range: {getattr(args, name)}")
    if not Path(args.data).is_dir():
        raise ValueError(f"{args.data}: data folder not found (pass --data)")
    from medattn.devices import nnunet_device_name

    args.device = nnunet_device_name(args.device)  # nnU-Net's commands take cpu, cuda or mps


def _environment(work: Path, args) -> dict:
    """nnU-Net's folders under ``work`` and the benchmark budget, for every subprocess."""
    from medattn.nnunet.commands import nnunet_environment

    env = nnunet_environment(work / "raw", work / "preprocessed", work / "results", n_proc=2)
    env.update(nnUNet_n_proc_DA=str(args.n_proc_da), MEDATTN_BENCH_EPOCHS=str(args.epochs),
               MEDATTN_BENCH_ITERATIONS=str(args.iterations), MEDATTN_BENCH_VAL_ITERATIONS=str(args.val_iterations))
    return env


def _bench_trainer(trainer, work, env, args, split, gt_dir, reference_metrics, loads) -> tuple[dict, object]:
    """Train, time and score one trainer; returns its results row and per-case metrics."""
    record = _train(trainer, work, env, args)
    loads[f"after training {trainer}"] = _load_average()
    seconds = _predict(trainer, work, split["val"], env, args)
    metrics, summary, paired = _evaluate(trainer, work, gt_dir, reference_metrics)
    row = {
        "params": record["num_parameters"], "step": timing_summary(record["step_seconds"], skip=5),
        "infer": timing_summary(seconds, skip=0), "summary": summary, "paired": paired,
        "batch_size": record["batch_size"], "patch_size": record["patch_size"],
        "torch_threads": record["torch_threads"],
    }
    return row, metrics


def _write_results(work: Path, args, split, loads, results, wall_seconds: float) -> str:
    """Write ``results.json`` and ``results.md`` under ``work``; returns the markdown."""
    from medattn.data.io import write_json_atomic, write_text_atomic

    settings = {key: getattr(args, key) for key in ("epochs", "iterations", "val_iterations", "val_cases",
                                                    "train_cases", "seed", "device", "n_proc_da")}
    header = (
        f"{len(split['train'])} training / {len(split['val'])} validation cases (seed {args.seed}); "
        f"{args.epochs} epochs x {args.iterations} iterations; device {args.device}; "
        f"wall {wall_seconds:.0f} s; load averages {loads}\n\n"
    )
    write_json_atomic(work / "results.json", {"settings": settings, "split": split, "loads": loads,
                                              "wall_seconds": wall_seconds, "results": results})
    text = header + format_tables(results)
    write_text_atomic(work / "results.md", text)
    return text

if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "--predict-worker":
        model_folder, out_dir, timings_file, device, *images = sys.argv[2:]
        _predict_worker(model_folder, out_dir, timings_file, device, images)
    else:
        parser = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
        add_arguments(parser)
        raise SystemExit(run(parser.parse_args()))
