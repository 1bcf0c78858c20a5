"""The generic natural-image trainer: :class:`ImageTrainConfig`, :class:`ImageTrainer`.

One training loop for classification, multi-label classification and semantic
segmentation on the ResNets of :mod:`medattn.images` with any block placement:

- losses: cross-entropy with label smoothing (classification; timm's ``Mixup``/CutMix with
  its soft-target cross-entropy when asked), BCE-with-logits with an optional per-class
  ``pos_weight`` = negatives / positives of the training set (multi-label), cross-entropy
  ignoring 255 plus ``aux_weight`` x the auxiliary head's (segmentation);
- optimizer: timm's ``create_optimizer_v2`` (no weight decay on norms and biases; a
  parameter shared under several names, as DIA's tied units are, is listed once);
- schedule: timm's schedulers stepped per iteration: cosine (classification default), step
  (decay 0.1 at ``milestones``), poly with power 0.9 (segmentation default), with linear
  warmup over ``warmup_epochs``;
- AMP (bf16 anywhere, fp16 with a GradScaler on CUDA), gradient clipping, EMA
  (:class:`medattn.images.ema.ModelEma`), ``channels_last``, ``torch.compile``;
- torchrun DDP (:mod:`medattn.images.distributed`): SyncBatchNorm for segmentation on
  CUDA (torch's DDP refuses it on CPU, where rank 0's BatchNorm statistics are broadcast
  before each validation instead), validation on unpadded shards, only rank 0 writes.

Output folder::

    out/
      checkpoint_last.pt   after every epoch (atomic); --resume continues from it
      checkpoint_best.pt   the epoch with the best validation accuracy / auroc_mean / miou
      metrics.csv          one row per epoch
      config.json          the run's configuration, classes, normalisation and split
      summary.json         the final validation metrics (accuracy/top5, auroc_mean/auroc, miou/iou)

Resume restores the model, optimizer, scheduler, GradScaler, EMA, RNG states, epoch,
global step and best metric. Each epoch also seeds its RNGs (data order, augmentation,
dropout, mixup) from (seed, epoch, rank), so a run of N epochs and a run of K epochs
resumed to N give bitwise equal weights on CPU. A folder that holds a run is never
overwritten without ``resume``.

Checkpoints are dicts of tensors and plain types (``torch.load(weights_only=True)``);
:func:`load_image_checkpoint` rebuilds the network from one.
"""

from __future__ import annotations

import csv
import io
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medattn.data.io import atomic_write, write_json_atomic, write_text_atomic
from medattn.images import distributed as dist_utils
from medattn.images import metrics as image_metrics
from medattn.images.data import (TASKS, ImageDataset, build_transforms, channel_statistics, collate_with_full_masks,
                                 discover)
from medattn.images.models import ModelConfig, build_model, load_pretrained
from medattn.runs import adopt_stored_settings, check_run_folder, read_run_checkpoint

__all__ = ["CHECKPOINT_FORMAT", "ImageTrainConfig", "ImageTrainer", "load_image_checkpoint", "read_image_checkpoint"]

CHECKPOINT_FORMAT = "medattn-image-checkpoint"
CHECKPOINT_VERSION = 1
LAST, BEST = "checkpoint_last.pt", "checkpoint_best.pt"
RUN_FILES = (LAST, BEST, "config.json", "metrics.csv", "summary.json")
#: Settings that define the run; a resume keeps the stored values.
RUN_DEFINING = ("task", "preset", "backbone", "attention", "head", "output_stride", "aux_loss", "num_classes",
                "image_size", "seed", "val_fraction")
SCHEDULES = ("cosine", "step", "poly", "none")
AMP_MODES = ("none", "bf16", "fp16")


@dataclass
class ImageTrainConfig:
    """Everything ``medattn train image`` can set.

    Attributes:
        task: "classification", "multilabel" or "segmentation".
        data: dataset folder or CSV (:mod:`medattn.images.data`).
        out: output folder.
        preset: a name of :func:`medattn.images.presets` (stock backbones included); or
        backbone: a stock backbone, with
        attention: a placement text (``"sna"``, ``"dsm@after_conv1:last"``) for it.
        head: segmentation head, "fcn" or "deeplabv3".
        output_stride: segmentation: 8 (dilated backbone) or None.
        aux_loss: segmentation: auxiliary FCN head on the previous stage.
        aux_weight: its loss weight (torchvision's 0.5).
        num_classes: segmentation: classes including background (default from the masks).
        epochs: total epochs (on resume, the new total).
        batch_size: samples per step per process.
        image_size: square input side; default 32 for CIFAR backbones, 224 otherwise.
        crop: training crop, "pad" (CIFAR recipe) or "resized"; default by backbone.
        optimizer: any timm optimizer name ("sgd" = SGD with Nesterov momentum, "adamw", ...).
        lr: peak learning rate; default 0.1 (SGD) or 1e-3 (others), 0.01 for segmentation SGD.
        momentum: SGD momentum.
        weight_decay: weight decay (not on norms and biases).
        sched: "cosine", "step", "poly" or "none"; default cosine, poly for segmentation.
        warmup_epochs: linear warmup from ``lr / 100``.
        milestones: epochs at which "step" multiplies the rate by 0.1 (default 50 %, 75 %).
        min_lr: floor of cosine and poly.
        label_smoothing: classification label smoothing.
        pos_weight: multilabel: weight positives by negatives / positives per class.
        mixup, cutmix: timm Mixup/CutMix alphas (classification; 0 = off).
        ema_decay: keep an EMA of the weights and validate it (None = off).
        amp: "none", "bf16" or "fp16" (CUDA only).
        clip_grad: max gradient norm (None = off).
        channels_last: NHWC memory format.
        compile: ``torch.compile`` the training model.
        seed: seed of split, weights, data order and augmentation.
        device: "auto" or a torch device (torchrun gives each rank ``cuda:LOCAL_RANK``).
        workers: data-loading processes.
        val_fraction: held-out share when the layout has no split.
        pretrained: local state-dict file for the backbone (never downloaded).
        resume: continue from ``out/checkpoint_last.pt``.
        stop_after: end this invocation once this many epochs are done (for time-limited
            jobs); the schedule still plans for ``epochs`` and a resume continues it
            exactly. None: train to ``epochs``.
        progress: show progress bars.
    """

    task: str
    data: str
    out: str
    preset: str | None = None
    backbone: str | None = None
    attention: str | None = None
    head: str = "fcn"
    output_stride: int | None = None
    aux_loss: bool = True
    aux_weight: float = 0.5
    num_classes: int | None = None
    epochs: int = 30
    batch_size: int = 32
    image_size: int | None = None
    crop: str | None = None
    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 1e-4
    sched: str | None = None
    warmup_epochs: int = 0
    milestones: list[int] | None = None
    min_lr: float = 0.0
    label_smoothing: float = 0.0
    pos_weight: bool = False
    mixup: float = 0.0
    cutmix: float = 0.0
    ema_decay: float | None = None
    amp: str = "none"
    clip_grad: float | None = None
    channels_last: bool = False
    compile: bool = False
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    val_fraction: float = 0.2
    pretrained: str | None = None
    resume: bool = False
    stop_after: int | None = None
    progress: bool = True

    def __post_init__(self):
        from medattn import placement
        from medattn.images import named_presets

        self.data, self.out = str(self.data), str(self.out)
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {list(TASKS)}")
        if (self.preset is None) == (self.backbone is None):
            raise ValueError("give either a preset or a backbone (with an optional attention placement)")
        if self.preset is not None and self.attention is not None:
            raise ValueError(f"preset {self.preset!r} fixes its placement; use --backbone with --attention instead")
        if self.backbone is not None and self.backbone not in named_presets.backbones():
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {named_presets.backbones()}")
        if self.preset is not None:
            named_presets.preset(self.preset)
        spec = placement.parse(self.attention)
        self.attention = None if spec is None else spec.to_text()
        positive = {"epochs": self.epochs, "batch_size": self.batch_size}
        if self.image_size is not None:
            positive["image_size"] = self.image_size
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.sched is not None and self.sched not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.sched!r}; choose one of {list(SCHEDULES)}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {list(AMP_MODES)}, got {self.amp!r}")
        if self.crop not in (None, "pad", "resized"):
            raise ValueError(f"crop must be 'pad' or 'resized', got {self.crop!r}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if (self.mixup or self.cutmix) and self.task != "classification":
            raise ValueError("mixup and cutmix apply to classification only")
        if self.pos_weight and self.task != "multilabel":
            raise ValueError("pos_weight applies to multilabel only")
        if self.task != "segmentation" and (self.output_stride is not None or self.num_classes is not None):
            raise ValueError("output_stride and num_classes apply to segmentation only (classes come from the data)")
        ModelConfig(self.task, self.network_name, self.attention, 2, head=self.head, output_stride=self.output_stride)
        from timm.optim import list_optimizers

        if self.optimizer not in list_optimizers():
            raise ValueError(f"unknown optimizer {self.optimizer!r}; timm knows {list_optimizers()}")

    @property
    def network_name(self) -> str:
        return self.preset or self.backbone

    @property
    def cifar_style(self) -> bool:
        from medattn.images.named_presets import preset
        from medattn.images.resnets import CIFAR_DEPTHS

        return int(preset(self.network_name).backbone[len("resnet"):]) in CIFAR_DEPTHS

    def resolved(self) -> dict:
        """The settings with every default that depends on others filled in."""
        values = asdict(self)
        values["image_size"] = self.image_size or (32 if self.cifar_style else 224)
        values["crop"] = self.crop or ("pad" if self.cifar_style else "resized")
        values["sched"] = self.sched or ("poly" if self.task == "segmentation" else "cosine")
        if self.lr is None:
            values["lr"] = (0.01 if self.task == "segmentation" else 0.1) if self.optimizer == "sgd" else 1e-3
        return values

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- checkpoints


def read_image_checkpoint(path) -> dict:
    """A checkpoint of :class:`ImageTrainer` (``weights_only`` loading).

    Raises:
        FileNotFoundError, ValueError: naming the file.
    """
    return read_run_checkpoint(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, "image")


def is_image_checkpoint(path) -> bool:
    """Whether ``path`` (a file, or a run folder holding checkpoint_best.pt) is an image checkpoint,
    judged from the run's config.json so that no weights are loaded."""
    import json

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    config = folder / "config.json"
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("format") == CHECKPOINT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def load_image_checkpoint(path, use_ema: bool = True) -> tuple[nn.Module, dict]:
    """Rebuild the network of a checkpoint (its EMA weights when it has them and
    ``use_ema``), in eval mode; also returns the checkpoint without the weights."""
    checkpoint = read_image_checkpoint(path)
    model = build_model(ModelConfig(**checkpoint["model_config"]))
    source = "ema" if use_ema and checkpoint.get("ema") else "model"
    weights = checkpoint["model"]
    if source == "ema":  # ModelEma's state: averaged.n_averaged, averaged.module.<model keys>
        prefix = "averaged.module."
        weights = {k[len(prefix):]: v for k, v in checkpoint["ema"].items() if k.startswith(prefix)}
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit the network the checkpoint describes ({err})") from err
    model.eval()
    info = {k: v for k, v in checkpoint.items() if k not in ("model", "ema", "optimizer", "scheduler", "scaler")}
    info["weights"] = source
    return model, info


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
            "numpy_pos": int(np_state[2]), "python": list(random.getstate()[1]),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- trainer


@dataclass
class _Progress:
    epoch: int = 0
    global_step: int = 0
    history: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"epoch": 0, "value": float("nan")})
    final: dict = field(default_factory=dict)


class ImageTrainer:
    """Train one network; see the module docstring for what it writes.

    Example:
        >>> ImageTrainer(ImageTrainConfig(task="classification", data="textures", out="runs/sna",
        ...                               preset="sna_resnet20", epochs=30)).run()  # doctest: +SKIP
    """

    def __init__(self, config: ImageTrainConfig | None = None, **kwargs):
        if config is None:
            config = ImageTrainConfig(**kwargs)
        elif kwargs:
            raise ValueError("give either an ImageTrainConfig or keyword arguments, not both")
        self.config = config
        self.out = Path(config.out)
        #: The trained network (unwrapped from DDP and compile) once :meth:`run` returns.
        self.model: nn.Module | None = None

    # -- setup ---------------------------------------------------------------------------

    def _resume_state(self, world) -> dict | None:
        cfg = self.config
        if not check_run_folder(self.out, RUN_FILES, LAST, cfg.resume, lambda text: self._log(text, world),
                                clean=world.is_main):
            return None
        state = read_image_checkpoint(self.out / LAST)
        adopt_stored_settings(cfg, state["train_config"], RUN_DEFINING, self.out / LAST)
        return state

    def _data(self, resume_state):
        cfg = self.config
        data = discover(cfg.task, cfg.data, cfg.val_fraction, cfg.seed, cfg.num_classes)
        if resume_state is not None:
            stored = resume_state["split"]
            now = data.split_record()
            if stored["train"] != now["train"] or stored["val"] != now["val"]:
                raise ValueError(f"--resume: the samples in {cfg.data} differ from the run's split (config.json); "
                                 "resume with the data the run started with")
            normalisation = resume_state["normalisation"]
        else:
            mean, std = channel_statistics(data.train, data.channels, cfg.seed)
            normalisation = {"mean": mean, "std": std}
        return data, normalisation

    def _model(self, data, resume_state, settings, world):
        cfg = self.config
        torch.manual_seed(cfg.seed)
        model_config = ModelConfig(cfg.task, cfg.network_name, cfg.attention, len(data.classes), data.channels,
                                   cfg.head, cfg.output_stride, cfg.aux_loss)
        model = build_model(model_config)
        if cfg.pretrained and resume_state is None:
            report = load_pretrained(model, cfg.pretrained)
            self._log(f"pretrained {cfg.pretrained}: {report.describe()}", world)
        if resume_state is not None:
            model.load_state_dict(resume_state["model"])
        return model, model_config

    def _optimizer(self, model, settings):
        from timm.optim import create_optimizer_v2

        cfg = self.config
        name = "sgd" if cfg.optimizer == "sgd" else cfg.optimizer
        return create_optimizer_v2(model, opt=name, lr=settings["lr"], weight_decay=cfg.weight_decay,
                                   momentum=cfg.momentum)

    def _scheduler(self, optimizer, settings, steps_per_epoch):
        from timm.scheduler import create_scheduler_v2

        cfg = self.config
        if settings["sched"] == "none":
            return None
        milestones = cfg.milestones or [max(1, round(cfg.epochs * 0.5)), max(1, round(cfg.epochs * 0.75))]
        scheduler, _ = create_scheduler_v2(
            optimizer, sched="multistep" if settings["sched"] == "step" else settings["sched"], num_epochs=cfg.epochs,
            decay_milestones=milestones, decay_rate=0.9 if settings["sched"] == "poly" else 0.1, min_lr=cfg.min_lr,
            warmup_epochs=cfg.warmup_epochs, warmup_lr=settings["lr"] / 100, step_on_epochs=False,
            updates_per_epoch=steps_per_epoch)
        return scheduler

    def _loss(self, data, train_samples):
        cfg = self.config
        if cfg.task == "segmentation":
            return nn.CrossEntropyLoss(ignore_index=255)
        if cfg.task == "multilabel":
            pos_weight = None
            if cfg.pos_weight:
                targets = torch.tensor([s.target for s in train_samples], dtype=torch.float64)
                positives = targets.sum(0).clamp(min=1)
                pos_weight = ((len(targets) - targets.sum(0)) / positives).float()
            return nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        if cfg.mixup or cfg.cutmix:
            from timm.loss import SoftTargetCrossEntropy

            return SoftTargetCrossEntropy()
        return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    # -- run -------------------------------------------------------------------------------

    def run(self) -> dict:
        """Train (or continue) to ``config.epochs``; returns the summary (also summary.json).

        Raises:
            ValueError, FileNotFoundError: for bad data, settings or a mismatched resume,
                with the file or value named.
        """
        from medattn.devices import resolve_device

        cfg = self.config
        world, device = dist_utils.setup(resolve_device(cfg.device))
        try:
            return self._run(world, device)
        finally:
            dist_utils.teardown(world)

    def _run(self, world, device) -> dict:
        cfg = self.config
        if cfg.amp == "fp16" and device.type != "cuda":
            raise ValueError(f"--amp fp16 needs CUDA (device {device}); use --amp bf16")
        resume_state = self._resume_state(world)
        settings = cfg.resolved()
        data, normalisation = self._data(resume_state)
        model, model_config = self._model(data, resume_state, settings, world)
        if cfg.task == "segmentation" and world.distributed and device.type == "cuda":
            # torch's DDP accepts SyncBatchNorm on GPU modules only; on CPU (gloo) each rank
            # keeps plain BatchNorm and rank 0's statistics are broadcast before validation.
            from medattn.insertion import convert_sync_batchnorm

            model = convert_sync_batchnorm(model)
        model.to(device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        train_loader = self._train_loader(data, settings, normalisation, world)
        optimizer = self._optimizer(model, settings)
        scheduler = self._scheduler(optimizer, settings, len(train_loader))
        scaler = torch.amp.GradScaler("cuda") if cfg.amp == "fp16" else None
        progress = _Progress()
        if resume_state is not None:
            optimizer.load_state_dict(resume_state["optimizer"])
            if scaler is not None and resume_state.get("scaler"):
                scaler.load_state_dict(resume_state["scaler"])
            progress = _Progress(resume_state["epoch"], resume_state["global_step"], list(resume_state["history"]),
                                 dict(resume_state["best"]), dict(resume_state.get("final", {})))
            _restore_rng(resume_state["rng"])
        if scheduler is not None:
            scheduler.step_update(progress.global_step)
        ema = None
        if cfg.ema_decay is not None:
            from medattn.images.ema import ModelEma

            ema = ModelEma(model, cfg.ema_decay)
            if resume_state is not None and resume_state.get("ema"):
                ema.load_state_dict(resume_state["ema"])
        trained = model
        if world.distributed:
            trained = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        if cfg.compile:
            trained = torch.compile(trained)
        record = {"format": CHECKPOINT_FORMAT, "train_config": cfg.to_dict(), "settings": settings,
                  "model_config": model_config.to_dict(), "attention": model.medattn_config["resolved_attention"],
                  "classes": data.classes, "channels": data.channels, "normalisation": normalisation,
                  "split": data.split_record(), "notes": data.notes}
        if world.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.out / "config.json", record)
        n_params = sum(p.numel() for p in model.parameters())
        self._log(f"{cfg.network_name} + {model.medattn_config['resolved_attention'] or 'no attention'} ({cfg.task}): "
                  f"{n_params:,} parameters, {len(data.classes)} classes, {len(data.train)} training / "
                  f"{len(data.val)} validation samples ({data.split_source} split), {data.channels} channel(s), "
                  f"{settings['image_size']}px, device {device}, {world.size} process(es)", world)
        if progress.epoch >= cfg.epochs:
            self._log(f"{self.out / LAST} already has {progress.epoch} epochs (asked for {cfg.epochs}); nothing to do",
                      world)
        loss_fn = self._loss(data, data.train).to(device)
        mixup = self._mixup(len(data.classes), settings)
        val_ds = self._val_dataset(data, settings, normalisation)
        for epoch in range(progress.epoch, min(cfg.epochs, cfg.stop_after or cfg.epochs)):
            started = time.perf_counter()
            train_loss = self._train_epoch(trained, model, train_loader, optimizer, scheduler, scaler, ema, loss_fn,
                                           mixup, device, epoch, progress, world)
            train_time = time.perf_counter() - started
            started = time.perf_counter()
            evaluated = ema.module if ema is not None else model
            dist_utils.broadcast_buffers(model, world)
            if ema is not None:
                dist_utils.broadcast_buffers(ema.module, world)
            metrics = evaluate(evaluated, val_ds, cfg.task, data.classes, device, cfg.batch_size, cfg.workers, world,
                               amp=cfg.amp, channels_last=cfg.channels_last, progress=cfg.progress and world.is_main)
            row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "train_loss": train_loss,
                   **_flatten(metrics), "train_time_s": train_time, "val_time_s": time.perf_counter() - started}
            progress.epoch, progress.final = epoch + 1, metrics
            progress.history.append(row)
            value = image_metrics.primary_value(metrics, cfg.task)
            is_best = image_metrics.better(value, progress.best["value"])
            if is_best:
                progress.best = {"epoch": epoch + 1, "value": value, "metric": image_metrics.PRIMARY[cfg.task]}
            if world.is_main:
                self._save(model, optimizer, scheduler, scaler, ema, progress, record, is_best)
            self._log(f"epoch {epoch + 1}/{cfg.epochs}: loss {train_loss:.4f}, {image_metrics.PRIMARY[cfg.task]} "
                      f"{value:.4f} ({train_time:.1f} s train)", world)
        summary = dict(progress.final, task=cfg.task, epochs=progress.epoch, best_epoch=progress.best["epoch"],
                       best=progress.best["value"], metric=image_metrics.PRIMARY[cfg.task],
                       evaluated_with="ema" if ema is not None else "model", out=str(self.out))
        if world.is_main:
            write_json_atomic(self.out / "summary.json", summary)
        self.model = model
        dist_utils.barrier(world)
        return summary

    # -- data ------------------------------------------------------------------------------

    def _train_loader(self, data, settings, normalisation, world):
        from torch.utils.data import DataLoader, DistributedSampler

        cfg = self.config
        transform = build_transforms(cfg.task, True, settings["image_size"], normalisation["mean"], normalisation["std"],
                                     settings["crop"])
        dataset = ImageDataset(data.train, cfg.task, transform, data.channels)
        # One sampler for every world size: the order depends on (seed, epoch) only.
        sampler = DistributedSampler(dataset, num_replicas=world.size, rank=world.rank, shuffle=True, seed=cfg.seed)
        per_rank = math.ceil(len(dataset) / world.size)
        drop_last = per_rank > cfg.batch_size  # no tiny last batch (BatchNorm, even mixup batches)
        return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                          drop_last=drop_last, persistent_workers=False)

    def _val_dataset(self, data, settings, normalisation):
        cfg = self.config
        transform = build_transforms(cfg.task, False, settings["image_size"], normalisation["mean"],
                                     normalisation["std"])
        return ImageDataset(data.val, cfg.task, transform, data.channels, keep_full_mask=True)

    def _mixup(self, num_classes, settings):
        cfg = self.config
        if not (cfg.mixup or cfg.cutmix):
            return None
        from timm.data import Mixup

        return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                     num_classes=num_classes)

    def _seed_epoch(self, epoch: int, rank: int, loader) -> None:
        # Seeding from (seed, epoch, rank) makes a resumed run draw the same data order,
        # crops, flips, dropout masks and mixup factors as an uninterrupted one.
        seed = (self.config.seed * 1_000_003 + epoch * 1009 + rank) % 2**31
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        loader.sampler.set_epoch(epoch)

    # -- steps -----------------------------------------------------------------------------

    def _train_epoch(self, trained, model, loader, optimizer, scheduler, scaler, ema, loss_fn, mixup, device, epoch,
                     progress, world) -> float:
        from tqdm.auto import tqdm

        cfg = self.config
        self._seed_epoch(epoch, world.rank, loader)
        trained.train()
        autocast = _autocast(cfg.amp, device)
        total, count = torch.zeros((), dtype=torch.float64), 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False,
                   disable=not (cfg.progress and world.is_main))
        for images, targets in bar:
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            if cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            if mixup is not None:
                images, targets = mixup(images, targets)
            with autocast:
                loss = self._compute_loss(trained(images), targets, loss_fn)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"epoch {epoch + 1}: training loss is {loss.item()}; lower --lr or check "
                                         "the data")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                if cfg.clip_grad:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                if cfg.clip_grad:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                optimizer.step()
            progress.global_step += 1
            if scheduler is not None:
                scheduler.step_update(progress.global_step)
            if ema is not None:
                ema.update(model)
            total += loss.detach().double().cpu()
            count += 1
            bar.set_postfix(loss=f"{loss.item():.4f}")
        return float(total / max(count, 1))

    def _compute_loss(self, output, targets, loss_fn):
        cfg = self.config
        if cfg.task != "segmentation":
            return loss_fn(output.float(), targets)
        loss = loss_fn(output["out"].float(), targets)
        if "aux" in output:
            loss = loss + cfg.aux_weight * loss_fn(output["aux"].float(), targets)
        return loss

    # -- output ----------------------------------------------------------------------------

    def _save(self, model, optimizer, scheduler, scaler, ema, progress, record, is_best) -> None:
        from medattn import __version__

        checkpoint = {
            "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION,
            **{k: record[k] for k in ("model_config", "attention", "classes", "channels", "normalisation", "split",
                                      "settings", "train_config")},
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "ema": None if ema is None else {k: v.detach().cpu() for k, v in ema.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "scaler": None if scaler is None else scaler.state_dict(),
            "rng": _rng_state(), "epoch": progress.epoch, "global_step": progress.global_step,
            "history": progress.history, "best": progress.best, "final": progress.final,
            "versions": {"medattn": str(__version__), "torch": str(torch.__version__)},
        }
        with atomic_write(self.out / LAST, suffix=".pt") as tmp:
            torch.save(checkpoint, tmp)
        if is_best:
            best = {k: v for k, v in checkpoint.items() if k not in ("optimizer", "scheduler", "scaler", "rng")}
            with atomic_write(self.out / BEST, suffix=".pt") as tmp:
                torch.save(best, tmp)
        self._write_csv(progress.history)

    def _write_csv(self, history: list[dict]) -> None:
        columns = list(dict.fromkeys(key for row in history for key in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in history:
            writer.writerow({k: _csv_value(row.get(k)) for k in columns})
        write_text_atomic(self.out / "metrics.csv", buffer.getvalue())

    def _log(self, message: str, world) -> None:
        if world.is_main:
            from tqdm.auto import tqdm

            tqdm.write(message, file=sys.stderr)


def _autocast(amp: str, device: torch.device):
    if amp == "none":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.no_grad()
def evaluate(model, dataset, task, classes, device, batch_size, workers, world=None, amp="none",
             channels_last=False, progress=False) -> dict:
    """The task's metrics of ``model`` on ``dataset`` (an evaluation-mode :class:`ImageDataset`),
    every sample counted once across ranks (:mod:`medattn.images.distributed`)."""
    from torch.utils.data import DataLoader, Subset
    from tqdm.auto import tqdm

    world = world or dist_utils.World()
    indices = dist_utils.shard(len(dataset), world)
    segmentation = task == "segmentation"
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, num_workers=workers,
                        collate_fn=collate_with_full_masks if segmentation else None)
    model.eval()
    outputs, targets = [], []
    matrix = torch.zeros(len(classes), len(classes), dtype=torch.int64)
    for batch in tqdm(loader, desc="validation", unit="batch", leave=False, disable=not progress):
        images = batch[0].to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with _autocast(amp, device):
            output = model(images)
        if segmentation:
            for logits, mask in zip(output["out"].float(), batch[2]):
                matrix += image_metrics.confusion_matrix(upsampled_prediction(logits, mask.shape).cpu(), mask,
                                                         len(classes))
        else:
            outputs.append(output.float().cpu())
            targets.append(batch[1].cpu())
    if segmentation:
        return image_metrics.segmentation_metrics(dist_utils.sum_across(matrix, world), classes)
    width = len(classes)
    logits = torch.cat(outputs) if outputs else torch.zeros(0, width)
    target = torch.cat(targets) if targets else torch.zeros((0, width) if task == "multilabel" else (0,))
    logits = dist_utils.gather_in_order(indices, logits, world)
    target = dist_utils.gather_in_order(indices, target, world)
    if task == "multilabel":
        return image_metrics.multilabel_metrics(logits, target, classes)
    return image_metrics.classification_metrics(logits, target.long())


def upsampled_prediction(logits: torch.Tensor, size) -> torch.Tensor:
    """Class indices of (C, h, w) logits bilinearly resized to ``size`` (H, W)."""
    resized = nn.functional.interpolate(logits[None], size=tuple(size), mode="bilinear", align_corners=False)
    return resized[0].argmax(0)


def _flatten(metrics: dict) -> dict:
    row = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            row.update({f"{key}_{name}": v for name, v in value.items()})
        else:
            row[key] = value
    return row


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value
