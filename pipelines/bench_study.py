"""``medattn bench study``: stock against every block at an equal budget, several seeds, paired over cases.

Every (variant, seed) pair is trained into its own resumable run folder, predicted on the
test cases with ``medattn predict`` (:func:`medattn.inference.predict`) and scored with
``medattn evaluate`` (:func:`medattn.evaluation.evaluate_folders`). Then
:mod:`medattn.pipelines.study_report` pairs each variant with stock case by case (per seed
and pooled over seeds, Wilcoxon), and ``study.json``, ``report.md`` and ``report.html``
are written into ``--work``.

What is equal between the runs of one seed, by construction:

- **the split**: ``--test-images``/``--test-labels`` are the test set; without them a
  seeded share of ``--data`` (``--test-fraction``, ``--split-seed``) is held out as the
  test set. The rest is split into training and validation cases with the same seed. The
  split is the same for every variant and every seed (a seed varies the initial weights
  and the augmentation, not the cases), and is recorded in ``split.json`` and ``study.json``;
- **the initial stock weights**: the stock network is built from the seed first, and the
  blocks are inserted after it, so every variant starts from the same stock weights;
- **the augmentation stream**: crops, flips and batch order are drawn from generators
  seeded by (seed, epoch) alone, never from the network;
- **the budget**: ``--steps`` optimizer steps, rounded up to whole epochs, the same for all.

No tuning on the test set: every run is scored with its last checkpoint (a fixed budget,
``--checkpoint last``) or with the checkpoint of its best *validation* Dice (``best``);
the validation Dice of each run is recorded, and any choice of hyperparameters or
defaults is to be made on it alone. The test cases are only predicted and scored.

Speed and memory: after training, one training step of every variant is timed side by
side (rounds of all variants in rotating order, median over ``--timing-steps``) on a
random batch of the training shape, and its peak memory is measured; the report gives
both as ratios to stock.

Resuming: run the same command again. Finished runs, predictions and evaluations are
reused; a run stopped mid-way continues from its last checkpoint. A ``--work`` folder
that holds a study with other settings (data, split, budget, network, optimizer) is
refused; variants and seeds may be added.

Example:
    medattn bench study --data ../shared/data/Task04_Hippocampus --work runs/study \\
        --variants stock,dsm,sna,dia --seeds 0 1 2 --steps 400
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from pathlib import Path

from medattn.devices import add_device_argument

DESCRIPTION = "stock vs every block at an equal budget: several seeds, paired Wilcoxon over test cases\n\n" + (
    __doc__.split("\n", 1)[1].strip().replace("``", "").replace(":func:", "").replace(":mod:", "")
)

ENGINES = ("monai", "nnunet")
SETTINGS_FILE = "study_settings.json"
STUDY_FORMAT = "medattn-study"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--data", required=True, help="training dataset: nnU-Net raw or MSD layout")
    data.add_argument("--test-images", metavar="DIR", help="external test images (CASE.nii.gz or CASE_0000.nii.gz)")
    data.add_argument("--test-labels", metavar="DIR", help="their label maps (CASE.nii.gz); both or neither")
    data.add_argument("--test-fraction", type=float, default=0.25,
                      help="share of --data held out as the test set when no --test-images (default: 0.25)")
    data.add_argument("--val-fraction", type=float, default=0.2,
                      help="share of the remaining cases used for validation (default: 0.2)")
    data.add_argument("--split-seed", type=int, default=0, help="seed of the test and validation split (default: 0)")
    data.add_argument("--work", required=True, help="study folder: runs, predictions, evaluations, study.json, "
                      "report.html")

    study = parser.add_argument_group("study")
    study.add_argument("--engine", choices=ENGINES, default="monai", help="training engine (default: monai)")
    study.add_argument("--variants", nargs="+", default=["stock,dsm,sna,dia"], metavar="SPEC",
                       help="placements to compare, comma- or space-separated, e.g. stock,dsm,"
                       "'sna{\"identity_init\": true}',dia; stock is always included (default: stock,dsm,sna,dia)")
    study.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (default: 0 1 2)")
    study.add_argument("--steps", type=int, default=400,
                       help="optimizer steps per run, rounded up to whole epochs (default: 400)")
    study.add_argument("--checkpoint", choices=("last", "best"), default="last",
                       help="scored checkpoint: last (fixed budget) or best validation Dice (default: last)")

    monai = parser.add_argument_group("MONAI engine")
    monai.add_argument("--network", choices=("dynunet", "segresnet", "basicunet"), default="dynunet",
                       help="MONAI network (default: dynunet)")
    monai.add_argument("--network-kwargs", default="{}", metavar="JSON",
                       help="MONAI constructor arguments (default for dynunet: {\"filters\": [16, 32, 64, 128]})")
    monai.add_argument("--roi", default="40,56,40", help="patch size, RAS order (default: 40,56,40)")
    monai.add_argument("--optimizer", choices=("sgd", "adamw"), default="adamw", help="(default: adamw)")
    monai.add_argument("--lr", type=float, default=3e-3, help="initial learning rate, poly decay (default: 3e-3)")
    monai.add_argument("--weight-decay", type=float, default=3e-5, help="(default: 3e-5)")
    monai.add_argument("--batch-size", type=int, default=2, help="cases per step (default: 2)")
    monai.add_argument("--samples-per-case", type=int, default=1, help="crops per case per step (default: 1)")

    nnunet = parser.add_argument_group("nnU-Net engine")
    nnunet.add_argument("--configuration", default="3d_fullres", help="nnU-Net configuration (default: 3d_fullres)")
    nnunet.add_argument("--iterations", type=int, default=50,
                        help="nnU-Net training iterations per epoch; --steps is rounded up to whole epochs of "
                        "them (default: 50)")
    nnunet.add_argument("--da-workers", type=int, default=0,
                        help="nnU-Net augmentation worker processes (nnUNet_n_proc_DA); 0, the default, augments "
                        "in the training process from seeded generators, so every variant sees the same batches")
    nnunet.add_argument("--timeout", type=float, default=4 * 3600, help="seconds allowed per nnU-Net command")

    system = parser.add_argument_group("system")
    add_device_argument(system, what="training and prediction")
    system.add_argument("--no-tta", action="store_true", help="predict without mirroring test-time augmentation")
    system.add_argument("--timing-steps", type=int, default=10,
                        help="interleaved training steps per variant for the cost ratios (default: 10)")
    system.add_argument("--no-progress", action="store_true", help="no progress bars")


# ----------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    """One network of the study: ``name`` (folder and table name) and its placement text
    (None for stock)."""

    name: str
    placement: str | None


def split_variant_list(text: str) -> list[str]:
    """Split ``stock,dsm:0,1,sna{"a": 1, "b": 2}`` into placements.

    A comma starts a new placement when it is outside braces and what follows it up to
    the next ``@ : { ,`` is a block name (a stage list such as ``0,1`` or ``first,last``
    continues the placement before it).
    """
    from medattn import placement

    starts = set(placement.block_names()) | set(placement.DIA_UNITS) | set(placement.ALIASES) | {"stock", "none"}
    items, depth, current = [], 0, ""
    for index, char in enumerate(text):
        depth += (char == "{") - (char == "}")
        if char == "," and depth == 0:
            following = re.match(r"\s*([^@:{,\s]*)", text[index + 1:]).group(1).lower()
            if following in starts:
                items.append(current)
                current = ""
                continue
        current += char
    items.append(current)
    return [item.strip() for item in items if item.strip()]


def parse_variants(items: list[str]) -> list[Variant]:
    """Stock first, then each distinct placement of ``items``.

    Raises:
        ValueError: for an unknown block or a malformed placement (naming it), or two
            items that mean the same placement.
    """
    from medattn import placement

    variants = [Variant("stock", None)]
    for item in (part for text in items for part in split_variant_list(text)):
        try:
            spec = placement.parse(item)
        except ValueError as err:
            raise ValueError(f"--variants {item!r}: {err}") from None
        if spec is None:
            continue
        variant = Variant(spec.slug(), spec.to_text())
        if any(v.name == variant.name for v in variants):
            raise ValueError(f"--variants: {item!r} repeats {variant.name!r}")
        variants.append(variant)
    if len(variants) == 1:
        raise ValueError("--variants: name at least one placement besides stock, e.g. --variants stock,dsm")
    return variants


# ----------------------------------------------------------------------------- data and split


@dataclass
class TestCase:
    name: str
    images: tuple[str, ...]
    label: str


@dataclass
class StudyData:
    """The training dataset, the fixed train/validation split and the test cases."""

    info: object  # medattn.networks.data.DatasetInfo
    split: dict  # {"train", "val", "test"}: case ids (test: case names)
    source: str
    test_cases: list[TestCase]

    @property
    def labels(self) -> dict[int, str]:
        return {value: name for value, name in sorted(self.info.labels.items()) if value != 0}


def study_data(args) -> StudyData:
    """Read ``--data`` (and the external test set) and fix the split; every problem is a
    ValueError naming the file, raised before any training."""
    from medattn.networks.data import discover_dataset, split_cases

    try:
        info = discover_dataset(args.data)
    except FileNotFoundError as err:
        raise ValueError(str(err)) from None
    ids = [case.case_id for case in info.cases]
    if bool(args.test_images) != bool(args.test_labels):
        raise ValueError("give both --test-images and --test-labels, or neither")
    if args.test_images:
        test_cases = external_test_cases(args.test_images, args.test_labels, len(info.channel_names))
        pool, source = ids, f"external test set {args.test_images}"
    else:
        if len(ids) < 4:
            raise ValueError(f"{args.data}: {len(ids)} labelled cases; a study needs at least 4 (train, val, test)")
        pool, test_ids = split_cases(ids, args.test_fraction, args.split_seed)
        by_id = {case.case_id: case for case in info.cases}
        test_cases = [TestCase(_prediction_name(by_id[i].images[0]), by_id[i].images, by_id[i].label) for i in test_ids]
        source = f"seeded split of {args.data} (seed {args.split_seed}, test fraction {args.test_fraction})"
    train, val = split_cases(pool, args.val_fraction, args.split_seed)
    split = {"train": train, "val": val, "test": [case.name for case in test_cases]}
    return StudyData(info, split, source, test_cases)


def _prediction_name(image: str) -> str:
    """The case name ``medattn predict`` gives the prediction of ``image``."""
    from medattn.inference.naming import split_channel

    return split_channel(image)[0]


def external_test_cases(images_dir, labels_dir, num_channels: int) -> list[TestCase]:
    """Pair test images with label maps by case name, checking names and geometry.

    Raises:
        ValueError: for a missing folder, images without labels or labels without images
            (listing them), unreadable headers, or an image whose grid differs from its
            label's (naming the file and the field).
    """
    from medattn.data.io import case_name, check_same_geometry, list_images, read_header
    from medattn.inference.naming import collect_inputs, group_cases

    for option, folder in (("--test-images", images_dir), ("--test-labels", labels_dir)):
        if not Path(folder).is_dir():
            raise ValueError(f"{option} {folder}: not a folder")
    cases, problems = group_cases(collect_inputs([images_dir]), num_channels)
    if problems:
        raise ValueError(f"--test-images {images_dir}: " + "; ".join(p.message for p in problems[:5]))
    labels = {case_name(path): path for path in list_images(labels_dir)}
    names = {case.name for case in cases}
    unmatched = [f"images without labels in {labels_dir}: {sorted(names - set(labels))[:5]}" if names - set(labels)
                 else "", f"labels without images in {images_dir}: {sorted(set(labels) - names)[:5]}"
                 if set(labels) - names else ""]
    unmatched = [text for text in unmatched if text]
    if unmatched:
        raise ValueError("the test images and labels do not pair up: " + "; ".join(unmatched))
    found = []
    for case in cases:
        label = labels[case.name]
        try:
            check_same_geometry(read_header(label), read_header(case.files[0]), names=("label", "image"),
                                context=f"{case.files[0]}")
        except (ValueError, OSError, RuntimeError) as err:
            raise ValueError(str(err)) from None
        found.append(TestCase(case.name, tuple(map(str, case.files)), str(label)))
    return found


def link_ground_truth(data: StudyData, folder: Path) -> Path:
    """``folder`` holding a link to each test label map (the data is read in place)."""
    from medattn.data.io import image_suffix

    folder.mkdir(parents=True, exist_ok=True)
    wanted = {}
    for case in data.test_cases:
        wanted[f"{case.name}{image_suffix(case.label)}"] = Path(case.label).resolve()
    for entry in folder.iterdir():
        if entry.name not in wanted:
            entry.unlink()
    for name, target in wanted.items():
        link = folder / name
        if link.is_symlink() and link.resolve() == target:
            continue
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(target)
    return folder


def predict_test_cases(model: Path, data: StudyData, out_dir: Path, args, **options) -> None:
    """``medattn predict`` of every test case with ``model``; cases predicted before are kept."""
    from medattn.inference import predict

    files = [image for case in data.test_cases for image in case.images]
    report = predict(model, files, out_dir, device=args.device, tta=not args.no_tta, progress=False, **options)
    if report.failures:
        raise ValueError(f"predicting with {model}: " + "; ".join(f.message for f in report.failures))


# ----------------------------------------------------------------------------- the MONAI engine


class MonaiEngine:
    """Trains with :class:`medattn.networks.Trainer`; predicts with ``medattn predict``."""

    name = "monai"

    def __init__(self, args, data: StudyData):
        import json

        self.args, self.data = args, data
        try:
            kwargs = json.loads(args.network_kwargs)
        except json.JSONDecodeError as err:
            raise ValueError(f"--network-kwargs is not valid JSON ({err}): {args.network_kwargs!r}") from None
        if not isinstance(kwargs, dict):
            raise ValueError(f"--network-kwargs must be a JSON object, got {args.network_kwargs!r}")
        if args.network == "dynunet" and not kwargs:
            kwargs = {"filters": [16, 32, 64, 128]}
        self.network_kwargs = kwargs
        self.roi = [int(v) for v in args.roi.split(",")]
        self.steps_per_epoch = math.ceil(len(data.split["train"]) / args.batch_size)
        self.epochs = max(1, math.ceil(args.steps / self.steps_per_epoch))

    def check_variants(self, variants: list[Variant]) -> None:
        """Every placement builds in a MONAI network (checked by the builder at training)."""

    def prepare(self, work: Path) -> None:
        """Nothing to prepare: MONAI's transforms preprocess each run's cases."""

    def settings(self) -> dict:
        a = self.args
        return {"network": a.network, "network_kwargs": self.network_kwargs, "roi": self.roi,
                "optimizer": a.optimizer, "lr": a.lr, "weight_decay": a.weight_decay, "batch_size": a.batch_size,
                "samples_per_case": a.samples_per_case}

    def budget(self) -> dict:
        return {"steps": self.epochs * self.steps_per_epoch, "epochs": self.epochs,
                "steps_per_epoch": self.steps_per_epoch, "asked_steps": self.args.steps}

    def config(self, variant: Variant, seed: int, run_dir: Path):
        from medattn.networks.training import TrainConfig

        a = self.args
        return TrainConfig(
            data=str(self.data.info.root), out=str(run_dir), network=a.network, attention=variant.placement,
            network_kwargs=self.network_kwargs, epochs=self.epochs, roi=self.roi, batch_size=a.batch_size,
            samples_per_case=a.samples_per_case, optimizer=a.optimizer, lr=a.lr, weight_decay=a.weight_decay,
            val_every=self.epochs, split={"train": self.data.split["train"], "val": self.data.split["val"]},
            seed=seed, device=a.device, resume=True, progress=not a.no_progress,
        )

    def train(self, variant: Variant, seed: int, run_dir: Path) -> dict:
        """Train (or finish) one run; returns what study.json records of it."""
        from medattn.networks.training import LAST, Trainer, read_checkpoint

        Trainer(self.config(variant, seed, run_dir)).run()
        checkpoint = read_checkpoint(run_dir / LAST)
        history = checkpoint["history"]
        validation = [row["val_mean_dice"] for row in history if "val_mean_dice" in row]
        state = checkpoint["state_dict"]
        return {
            "run": str(run_dir),
            "epochs": checkpoint["epoch"],
            "steps": checkpoint["epoch"] * self.steps_per_epoch,
            "train_seconds": float(sum(row["train_time_s"] for row in history)),
            "validation_mean_dice": float(validation[-1]) if validation else None,
            "best_validation": checkpoint["best"],
            # DynUNet keeps its skip layers twice in the state dict; count them once.
            "parameters": int(sum(v.numel() for k, v in state.items() if not k.startswith("skip_layers."))),
        }

    def model(self, run_dir: Path) -> Path:
        from medattn.networks.training import BEST, LAST

        return run_dir / (LAST if self.args.checkpoint == "last" else BEST)

    def predict(self, run_dir: Path, out_dir: Path) -> None:
        predict_test_cases(self.model(run_dir), self.data, out_dir, self.args)

    def step_costs(self, variants: list[Variant], run_dirs: dict[str, Path]) -> dict[str, dict]:
        """Step time and peak memory of every variant, side by side, networks rebuilt
        from their checkpoints' descriptions."""
        from medattn.networks.training import LAST, network_from_config, read_checkpoint
        from medattn.pipelines.bench_monai import interleaved_step_costs

        networks = {v.name: network_from_config(read_checkpoint(run_dirs[v.name] / LAST)["network"]) for v in variants}
        a = self.args
        shape = (a.batch_size * a.samples_per_case, len(self.data.info.channel_names), *self.roi)
        return interleaved_step_costs(networks, shape, self.data.info.num_classes, a.device, a.timing_steps,
                                      seed=0)


# ----------------------------------------------------------------------------- the nnU-Net engine


class NnunetEngine:
    """Trains ``nnUNetTrainer<X>_study`` with ``nnUNetv2_train``; predicts with ``medattn predict``.

    ``--data`` is staged as an nnU-Net raw dataset of links to the training and validation
    cases only (the test cases never reach nnU-Net's planning), planned and preprocessed
    once in ``--work``, and the study's split is written as fold 0 of ``splits_final.json``.
    Each run gets its own ``nnUNet_results`` folder. A variant is a study trainer: a bare
    block name (``dsm``, ``sna``, ``dia``) means nnUNetTrainerDSM/SNA/DIA, and a placement
    text means the trainer that places exactly it (``sna{"identity_init": true}`` is
    nnUNetTrainerSNAIdentity).
    """

    name = "nnunet"
    DATASET_ID = 977
    DATASET = "Dataset977_Study"

    def __init__(self, args, data: StudyData):
        from medattn.devices import nnunet_device_name

        if args.iterations < 1:
            raise ValueError(f"--iterations must be positive, got {args.iterations}")
        if args.da_workers < 0:
            raise ValueError(f"--da-workers must be non-negative, got {args.da_workers}")
        self.args, self.data = args, data
        self.device = nnunet_device_name(args.device)
        self.iterations = min(args.iterations, args.steps)
        self.epochs = math.ceil(args.steps / self.iterations)
        self.trainers: dict[str, str] = {}
        self.work: Path | None = None

    # -- variants and data -----------------------------------------------------------------

    @staticmethod
    def study_trainers() -> dict[str, str]:
        """Placement text (and bare short name) to study trainer name."""
        from medattn import placement
        from medattn.nnunet.catalog import trainer_classes
        from medattn.nnunet.trainer import StudySchedule

        found = {}
        for name, cls in trainer_classes().items():
            if not issubclass(cls, StudySchedule):
                continue
            short = name.removeprefix("nnUNetTrainer").removesuffix("_study").lower()
            spec = placement.parse(cls.attention)
            found[short] = name
            found["stock" if spec is None else spec.to_text()] = name
        return found

    def check_variants(self, variants: list[Variant]) -> None:
        known = self.study_trainers()
        for variant in variants:
            key = "stock" if variant.placement is None else variant.placement
            if key not in known:
                choices = sorted(known)
                raise ValueError(f"--engine nnunet has no study trainer for {key!r}; choose among {choices} "
                                 "(medattn nnunet list shows the *_study trainers)")
            self.trainers[variant.name] = known[key]

    def settings(self) -> dict:
        return {"configuration": self.args.configuration, "iterations": self.iterations,
                "da_workers": self.args.da_workers}

    def budget(self) -> dict:
        return {"steps": self.epochs * self.iterations, "epochs": self.epochs, "steps_per_epoch": self.iterations,
                "asked_steps": self.args.steps}

    def environment(self, results: Path, seed: int = 0) -> dict:
        from medattn.nnunet.commands import nnunet_environment

        env = nnunet_environment(self.work / "nnunet_raw", self.work / "nnunet_preprocessed", results, n_proc=2)
        env.update(MEDATTN_STUDY_EPOCHS=str(self.epochs),
                   MEDATTN_STUDY_ITERATIONS=str(self.iterations), MEDATTN_STUDY_VAL_ITERATIONS="2",
                   MEDATTN_STUDY_SEED=str(seed))
        return env

    def prepare(self, work: Path) -> None:
        """Stage, plan and preprocess the dataset (once), and write the split as fold 0."""
        from medattn.data.io import write_json_atomic

        self.work = work.resolve()
        raw = self.work / "nnunet_raw" / self.DATASET
        self._stage_raw(raw)
        preprocessed = self.work / "nnunet_preprocessed" / self.DATASET
        plans = preprocessed / "nnUNetPlans.json"
        env = self.environment(self.work / "nnunet_results")
        if not plans.is_file() or not (preprocessed / f"nnUNetPlans_{self.args.configuration}").is_dir():
            self._run_or_explain("nnUNetv2_plan_and_preprocess",
                                 ["-d", self.DATASET_ID, "-c", self.args.configuration, "-np", env["nnUNet_def_n_proc"],
                                  "--verify_dataset_integrity"],
                                 env, self.work / "logs" / "plan_and_preprocess.log")
        write_json_atomic(preprocessed / "splits_final.json",
                          [{"train": self.data.split["train"], "val": self.data.split["val"]}])

    def _run_or_explain(self, name: str, arguments: list, env: dict, log_file: Path) -> None:
        """An nnU-Net command; its failure becomes a ValueError naming the log."""
        from medattn.nnunet.commands import NNUNetCommandError, run_nnunet

        try:
            run_nnunet(name, arguments, env, timeout=self.args.timeout, log_file=log_file)
        except NNUNetCommandError as err:
            raise ValueError(f"{name} failed (log: {log_file}; run the study again to resume): {err}") from None

    def _stage_raw(self, raw: Path) -> None:
        """An nnU-Net raw dataset of links to the training and validation cases."""
        from medattn.data.io import image_suffix, write_json_atomic

        info = self.data.info
        keep = set(self.data.split["train"]) | set(self.data.split["val"])
        cases = [case for case in info.cases if case.case_id in keep]
        if info.layout == "msd" and len(info.channel_names) > 1:
            raise ValueError(f"{info.root}: a multi-channel MSD dataset (4D images); convert it with "
                             "nnUNetv2_convert_MSD_dataset and pass the nnU-Net raw folder as --data")
        suffix = image_suffix(cases[0].label)
        for folder in ("imagesTr", "labelsTr"):
            (raw / folder).mkdir(parents=True, exist_ok=True)
        for case in cases:
            targets = [(raw / "imagesTr" / f"{case.case_id}_{k:04d}{suffix}", image) for k, image in enumerate(case.images)]
            targets.append((raw / "labelsTr" / f"{case.case_id}{suffix}", case.label))
            for link, target in targets:
                if not link.is_symlink():
                    link.symlink_to(Path(target).resolve())
        write_json_atomic(raw / "dataset.json", {
            "channel_names": {str(k): name for k, name in enumerate(info.channel_names)},
            "labels": {"background": 0, **{name: value for value, name in info.labels.items() if value != 0}},
            "numTraining": len(cases),
            "file_ending": suffix,
        })

    # -- runs ------------------------------------------------------------------------------

    def model(self, run_dir: Path, variant_name: str | None = None) -> Path:
        trainer = self.trainers[variant_name or run_dir.parent.name]
        return run_dir / self.DATASET / f"{trainer}__nnUNetPlans__{self.args.configuration}"

    def train(self, variant: Variant, seed: int, run_dir: Path) -> dict:
        import json

        fold = self.model(run_dir, variant.name) / "fold_0"
        if not (fold / "checkpoint_final.pth").is_file():
            resume = ["--c"] if (fold / "checkpoint_latest.pth").is_file() else []
            env = self.environment(run_dir, seed)
            env["nnUNet_n_proc_DA"] = str(self.args.da_workers)
            self._run_or_explain("nnUNetv2_train", [self.DATASET_ID, self.args.configuration, 0, "-tr",
                                                    self.trainers[variant.name], "-device", self.device, *resume],
                                 env, run_dir / "logs" / "train.log")
        summary = fold / "validation" / "summary.json"
        validation = None
        if summary.is_file():
            validation = json.loads(summary.read_text(encoding="utf-8"))["foreground_mean"]["Dice"]
        return {"run": str(run_dir), "trainer": self.trainers[variant.name], "epochs": self.epochs,
                "steps": self.epochs * self.iterations, "validation_mean_dice": validation}

    def predict(self, run_dir: Path, out_dir: Path) -> None:
        predict_test_cases(self.model(run_dir), self.data, out_dir, self.args, folds=[0])

    def step_costs(self, variants: list[Variant], run_dirs: dict[str, Path]) -> dict[str, dict]:
        """Step time and peak memory of every trainer's network, side by side, on the
        configuration's batch and patch size, deep supervision on (see
        :func:`medattn.pipelines.bench_nnunet.trainer_step_costs`)."""
        from medattn.pipelines.bench_nnunet import trainer_step_costs

        plans = self.work / "nnunet_preprocessed" / self.DATASET / "nnUNetPlans.json"
        trainers = {v.name: self.trainers[v.name] for v in variants}
        return trainer_step_costs(trainers, plans, self.args.configuration, len(self.data.info.channel_names),
                                  self.data.info.num_classes, self.args.device, self.args.timing_steps)

ENGINE_CLASSES = {"monai": MonaiEngine, "nnunet": NnunetEngine}


# ----------------------------------------------------------------------------- the study


def _check_arguments(args) -> None:
    if args.steps < 1:
        raise ValueError(f"--steps must be positive, got {args.steps}")
    if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
        raise ValueError(f"--seeds must be distinct non-negative integers, got {args.seeds}")
    for name in ("test_fraction", "val_fraction"):
        value = getattr(args, name)
        if not 0 < value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be in (0, 1), got {value}")
    if args.timing_steps < 1:
        raise ValueError(f"--timing-steps must be positive, got {args.timing_steps}")


def _check_settings(work: Path, settings: dict) -> None:
    """Store the study's settings in ``work``, or refuse a folder holding other ones."""
    import json

    from medattn.data.io import json_text, write_json_atomic

    path = work / SETTINGS_FILE
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        current = json.loads(json_text(settings))
        changed = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
        if changed:
            details = "; ".join(f"{k}: {stored.get(k)!r} there, {current.get(k)!r} now" for k in changed[:4])
            raise ValueError(f"{work} holds a study with other settings ({details}); use another --work "
                             "(nothing was changed)")
    else:
        work.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, settings)


def run(args) -> int:
    import os
    import time

    from tqdm.auto import tqdm

    from medattn.data.io import json_text, write_json_atomic, write_set_atomic
    from medattn.evaluation import evaluate_folders
    from medattn.devices import resolve_device
    from medattn.pipelines import study_report
    from medattn.pipelines.bench_blocks import machine_description

    _check_arguments(args)
    variants = parse_variants(args.variants)
    data = study_data(args)
    engine = ENGINE_CLASSES[args.engine](args, data)
    engine.check_variants(variants)
    work = Path(args.work)
    settings = {"engine": args.engine, "data": str(Path(args.data).resolve()), "split": data.split,
                "split_source": data.source, "budget": engine.budget(), "checkpoint": args.checkpoint,
                "tta": not args.no_tta, **engine.settings()}
    _check_settings(work, settings)
    write_json_atomic(work / "split.json", {"source": data.source, **data.split})
    engine.prepare(work)
    gt_dir = link_ground_truth(data, work / "ground_truth")

    started, load_before = time.perf_counter(), os.getloadavg()
    runs = {v.name: {} for v in variants}
    metrics = {}
    pairs = [(v, seed) for seed in args.seeds for v in variants]  # seed-major: a stopped study is balanced
    bar = tqdm(pairs, desc="study", unit="run", disable=args.no_progress)
    for variant, seed in bar:
        bar.set_postfix_str(f"{variant.name} seed {seed}")
        run_dir = work / "runs" / variant.name / f"seed_{seed}"
        record = engine.train(variant, seed, run_dir)
        predictions = work / "predictions" / variant.name / f"seed_{seed}"
        engine.predict(run_dir, predictions)
        evaluation = evaluate_folders(predictions, gt_dir, labels=data.labels, progress=False,
                                      out_dir=work / "evaluation" / variant.name / f"seed_{seed}")
        runs[variant.name][str(seed)] = record
        metrics[(variant.name, seed)] = evaluation.metrics
    run_dirs = {v.name: work / "runs" / v.name / f"seed_{args.seeds[0]}" for v in variants}
    costs = engine.step_costs(variants, run_dirs)
    results = study_report.summarise(metrics, data.labels, [v.name for v in variants], costs)
    study = {
        "format": STUDY_FORMAT,
        "format_version": 1,
        "settings": settings,
        "variants": {v.name: v.placement for v in variants},
        "labels": {str(k): v for k, v in data.labels.items()},
        "split": {"source": data.source, **data.split},
        "budget": engine.budget(),
        "selection": {
            "checkpoint": args.checkpoint,
            "rule": (f"every run scored with its {args.checkpoint} checkpoint; hyperparameters and defaults are "
                     "chosen on the validation split only (validation_mean_dice per run); the test cases are "
                     "only predicted and scored"),
        },
        "runs": runs,
        "results": results,
        "wall_seconds": time.perf_counter() - started,
        "machine": machine_description(resolve_device(args.device), load_before),
    }
    write_set_atomic(work, {"study.json": json_text(study), "report.md": study_report.markdown_report(study),
                            "report.html": study_report.html_report(study)})
    print(study_report.markdown_report(study))
    print(f"study written to {work / 'study.json'} and {work / 'report.html'}")
    return 0
