"""Training MONAI networks with attention: :class:`Trainer`, checkpoints, :func:`load_checkpoint`.

One epoch is one pass over the training cases (``samples_per_case`` label-balanced crops
each), with MONAI's ``DiceCELoss`` (summed over DynUNet's deep-supervision heads with
weights 1, 1/2, 1/4, ... normalised to 1), SGD with Nesterov momentum 0.99 and a poly
learning-rate decay (nnU-Net's and MONAI's DynUNet tutorial's recipe), then validation by
``sliding_window_inference`` on whole resampled volumes with MONAI's ``DiceMetric``.

Output folder::

    out/
      checkpoint_last.pt   written (atomically) after every epoch; ``--resume`` continues from it
      checkpoint_best.pt   the epoch with the best validation mean Dice
      metrics.csv          one row per epoch (loss, lr, mean and per-class Dice, wall and CPU times)
      config.json          the run's configuration, split and transform settings, readable

Checkpoint format (a dict saved with ``torch.save``; every value is a tensor or a plain
Python type, so ``torch.load(..., weights_only=True)`` reads it)::

    format          "medattn-monai-checkpoint"
    format_version  1
    network         {"name", "spatial_dims", "in_channels", "out_channels", "attention",
                     "network_kwargs"}: the arguments of medattn.networks.create that
                     rebuild the network; "attention" is the placement text with its
                     position resolved. Checkpoints written before the placement
                     language have "attention_stages" and "attention_kwargs" too and
                     meant the stage output (medattn.networks.builders.legacy_placement)
    state_dict      the network's weights
    transforms      {"spacing", "intensity", "roi", "samples_per_case", "ct_window",
                     "axcodes"}: TransformConfig, what the input must look like
    labels          {value: name}, background included
    channel_names   input channel names, e.g. ["CT"]
    epoch           completed epochs
    history         the metrics.csv rows
    best            {"epoch", "mean_dice"}
    split           {"train": [case ids], "val": [case ids]}
    train_config    the TrainConfig values
    optimizer       optimizer state (resume only)
    versions        medattn, monai and torch versions

:func:`load_checkpoint` rebuilds the network from it; ``medattn predict`` and the bundle's
inference use it.
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

from medattn.data.io import atomic_write, write_json_atomic, write_text_atomic
from medattn.devices import resolve_device
from medattn.networks import builders
from medattn.networks.data import discover_dataset, intensity_mode, split_cases, verify_dataset
from medattn.networks.transforms import TransformConfig, train_transforms, val_transforms
from medattn.runs import adopt_stored_settings, check_run_folder, read_run_checkpoint

__all__ = [
    "CHECKPOINT_FORMAT",
    "TrainConfig",
    "Trainer",
    "auto_roi",
    "load_checkpoint",
    "network_from_config",
    "read_checkpoint",
    "resolve_device",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "medattn-monai-checkpoint"
#: TrainConfig fields that define the network; a resumed run keeps the stored values.
RUN_DEFINING = ("network", "attention", "network_kwargs")
CHECKPOINT_VERSION = 1
LAST, BEST = "checkpoint_last.pt", "checkpoint_best.pt"
#: Every file a run writes into its output folder: any of them means the folder holds a run.
RUN_FILES = (LAST, BEST, "config.json", "metrics.csv")


@dataclass
class TrainConfig:
    """Everything ``medattn train monai`` and the bundle's ``train.json`` can set.

    Attributes:
        data: dataset folder, nnU-Net raw or MSD layout (:mod:`medattn.networks.data`).
        out: output folder (checkpoints, metrics.csv, config.json).
        network: "dynunet", "segresnet" or "basicunet".
        attention: a placement of :mod:`medattn.placement` in its text form
            (``"dsm"``, ``'dsm@after_conv1:0,1{"rd_ratio": 0.25}'``) or None for plain.
        network_kwargs: MONAI constructor arguments of the network (e.g. ``filters``).
        epochs: total epochs (on resume: the new total).
        roi: patch size in RAS order (x, y, z); None: the median resampled case size
            rounded up to the network's size divisor (multiple of 8), at most 128 per axis.
        spacing: target spacing in RAS order; None: the dataset's median spacing.
        batch_size: cases per step (each gives ``samples_per_case`` crops).
        samples_per_case: crops per case per step.
        optimizer: "sgd" (momentum 0.99, Nesterov) or "adamw".
        lr: initial learning rate (poly decay with exponent 0.9 over ``epochs``).
        weight_decay: optimizer weight decay.
        val_fraction: share of cases held out for validation (seeded split).
        val_every: validate every this many epochs (and always after the last).
        sw_batch_size: windows per sliding-window forward pass.
        sw_overlap: sliding-window overlap.
        limit_cases: use only the first N cases (sorted by id); for quick runs.
        split: a fixed ``{"train": [case ids], "val": [case ids]}``; only these cases are
            read, and the spacing and ROI defaults come from them alone (so a study's test
            cases never shape the preprocessing). None: a split drawn with ``seed``.
        seed: seed of the split (unless ``split`` is given), the initial weights and the
            augmentation.
        device: "auto" (CUDA, then MPS, then CPU) or a torch device string.
        num_workers: data-loading worker processes.
        cache_rate: share of cases whose preprocessed volumes are kept in memory.
        amp: mixed precision on CUDA.
        resume: continue from ``out/checkpoint_last.pt`` (a new run starts when there is none).
        progress: show tqdm progress bars.
    """

    data: str
    out: str
    network: str = "dynunet"
    attention: str | None = None
    network_kwargs: dict = field(default_factory=dict)
    epochs: int = 100
    roi: list[int] | None = None
    spacing: list[float] | None = None
    batch_size: int = 2
    samples_per_case: int = 1
    optimizer: str = "sgd"
    lr: float = 1e-2
    weight_decay: float = 3e-5
    val_fraction: float = 0.2
    val_every: int = 1
    sw_batch_size: int = 4
    sw_overlap: float = 0.5
    limit_cases: int | None = None
    split: dict | None = None
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    cache_rate: float = 1.0
    amp: bool = False
    resume: bool = False
    progress: bool = True

    def __post_init__(self):
        self.data, self.out = str(self.data), str(self.out)
        builders.network_spec(self.network)
        self.network = self.network.lower()
        placement = builders.normalise_attention(self.attention)
        self.attention = None if placement is None else placement.to_text()
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "val_every": self.val_every,
                    "sw_batch_size": self.sw_batch_size, "samples_per_case": self.samples_per_case}
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if not 0 <= self.sw_overlap < 1:
            raise ValueError(f"sw_overlap must be in [0, 1), got {self.sw_overlap!r}")
        if not 0 <= self.cache_rate <= 1:
            raise ValueError(f"cache_rate must be in [0, 1], got {self.cache_rate!r}")
        if self.limit_cases is not None and self.limit_cases < 2:
            raise ValueError(f"limit_cases must be at least 2, got {self.limit_cases!r}")
        if self.split is not None:
            self.split = _checked_split(self.split, self.limit_cases)
        self.network_kwargs = dict(self.network_kwargs or {})
        if self.roi is not None:
            self.roi = [int(v) for v in self.roi]
        if self.spacing is not None:
            self.spacing = [float(v) for v in self.spacing]

    def to_dict(self) -> dict[str, Any]:
        return builders._plain(asdict(self))


def _checked_split(split, limit_cases) -> dict[str, list[str]]:
    """``split`` as sorted lists; raises ValueError for a malformed or overlapping split."""
    if limit_cases is not None:
        raise ValueError("give either split or limit_cases, not both")
    if not isinstance(split, dict) or set(split) != {"train", "val"}:
        raise ValueError(f"split must be a dict with the keys 'train' and 'val', got {split!r:.200}")
    checked = {}
    for part in ("train", "val"):
        ids = split[part]
        if isinstance(ids, str) or not ids or not all(isinstance(i, str) for i in ids):
            raise ValueError(f"split[{part!r}] must be a non-empty list of case ids, got {ids!r:.200}")
        checked[part] = sorted(ids)
    shared = sorted(set(checked["train"]) & set(checked["val"]))
    if shared:
        raise ValueError(f"split: cases {shared[:5]} are both in 'train' and in 'val'")
    return checked


def auto_roi(median_shape, divisor, max_size: int = 128) -> list[int]:
    """Median resampled case size rounded up to a multiple of ``divisor`` (per axis), capped.

    Args:
        median_shape: per-axis median size after resampling.
        divisor: per-axis multiple the network needs (at least 8 is used, so that DynUNet
            gets three downsamplings on small structures).
        max_size: cap per axis (rounded down to the multiple).
    """
    roi = []
    for size, div in zip(median_shape, divisor):
        step = max(8, int(div))
        roi.append(int(min(max(step, math.ceil(size / step) * step), max(step, max_size // step * step))))
    return roi


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(path, network, transforms: TransformConfig | dict, **extra) -> Path:
    """Write a checkpoint (format in the module docstring) atomically.

    Args:
        path: destination file.
        network: a network built by :func:`medattn.networks.create` (it carries
            ``medattn_config``).
        transforms: the :class:`TransformConfig` the network was trained with.
        **extra: further entries (labels, channel_names, epoch, history, optimizer, ...).

    Raises:
        ValueError: if the network was not built by :func:`medattn.networks.create`.
    """
    config = getattr(network, "medattn_config", None)
    if config is None:
        raise ValueError(f"{type(network).__name__} was not built by medattn.networks.create: no medattn_config")
    import monai

    from medattn import __version__

    transforms = transforms.to_dict() if isinstance(transforms, TransformConfig) else dict(transforms)
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "network": builders._plain(config),
        "state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()},
        "transforms": transforms,
        "versions": {"medattn": str(__version__), "monai": str(monai.__version__), "torch": str(torch.__version__)},
    }
    checkpoint.update(extra)
    with atomic_write(path, suffix=".pt") as tmp:
        torch.save(checkpoint, tmp)
    return Path(path)


def read_checkpoint(path, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only`` loading).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not a readable medattn MONAI checkpoint, naming it.
    """
    path = Path(path)
    hint = f"; resume from {BEST if path.name == LAST else LAST} or train again"
    return read_run_checkpoint(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, "MONAI", hint, map_location)


def network_from_config(config: dict) -> torch.nn.Module:
    """Rebuild a network from its ``medattn_config`` (a checkpoint's ``network`` entry)."""
    return builders.create(
        config["name"],
        config["spatial_dims"],
        config["in_channels"],
        config["out_channels"],
        attention=builders.legacy_placement(config),
        **config["network_kwargs"],
    )


def load_checkpoint(path, map_location="cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the network of a checkpoint and load its weights.

    Args:
        path: a ``checkpoint_*.pt`` written by :class:`Trainer` or :func:`save_checkpoint`.
        map_location: where to put the weights (the network stays on the CPU unless this
            says otherwise).

    Returns:
        ``(network, config)``: the network in eval mode, and the checkpoint's entries
        except ``state_dict`` and ``optimizer`` (``config["transforms"]`` holds spacing,
        intensity and roi; ``config["labels"]`` the label names).

    Raises:
        FileNotFoundError, ValueError: see :func:`read_checkpoint`; also when the weights
            do not fit the rebuilt network.
    """
    checkpoint = read_checkpoint(path, map_location)
    network = network_from_config(checkpoint["network"])
    try:
        network.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit the network described in the checkpoint ({err})") from err
    network.eval()
    config = {k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer")}
    return network, config


# ----------------------------------------------------------------------------- training


@dataclass
class _Progress:
    """Where a training run stands: epochs done, the metrics rows, the best validation."""

    epoch: int = 0
    history: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"epoch": 0, "mean_dice": float("nan")})

    @classmethod
    def restore(cls, resume_state, network, optimizer) -> "_Progress":
        """A fresh start, or the state of ``checkpoint_last.pt`` loaded into ``network``
        and ``optimizer``."""
        if resume_state is None:
            return cls()
        network.load_state_dict(resume_state["state_dict"])
        optimizer.load_state_dict(resume_state["optimizer"])
        return cls(int(resume_state["epoch"]), list(resume_state["history"]), dict(resume_state["best"]))

    def record(self, row: dict) -> None:
        """Append an epoch's row; a higher validation mean Dice becomes the best."""
        self.history.append(row)
        self.epoch = row["epoch"]
        mean = row.get("val_mean_dice", float("nan"))
        if not math.isnan(mean) and (math.isnan(self.best["mean_dice"]) or mean > self.best["mean_dice"]):
            self.best = {"epoch": row["epoch"], "mean_dice": mean}


class Trainer:
    """Train one network on one dataset; see the module docstring for what it writes.

    Example:
        >>> Trainer(TrainConfig(data="Task04_Hippocampus", out="runs/dsm", attention="dsm",
        ...                     epochs=50)).run()  # doctest: +SKIP
    """

    def __init__(self, config: TrainConfig | None = None, **kwargs):
        if config is None:
            config = TrainConfig(**kwargs)
        elif kwargs:
            raise ValueError("give either a TrainConfig or keyword arguments, not both")
        self.config = config
        self.out = Path(config.out)

    # -- setup ---------------------------------------------------------------------------

    def _load_resume_state(self) -> dict | None:
        cfg = self.config
        if not check_run_folder(self.out, RUN_FILES, LAST, cfg.resume, self._log):
            return None
        state = read_checkpoint(self.out / LAST)
        stored = dict(state["train_config"], attention=builders.legacy_placement(state["train_config"]))
        # The stored run defines the network.
        adopt_stored_settings(cfg, stored, RUN_DEFINING, self.out / LAST, normalise=builders._plain)
        return state

    def _prepare(self, resume_state: dict | None):
        cfg = self.config
        info = discover_dataset(cfg.data)
        if cfg.limit_cases is not None:
            info.cases = info.cases[: cfg.limit_cases]
        if cfg.split is not None and resume_state is None:
            info.cases = _cases_of_split(info, cfg.split, cfg.data)
        verify_dataset(info, progress=cfg.progress)
        spatial_dims = len(info.spacings[0])
        if resume_state is not None:
            transforms = TransformConfig.from_dict(resume_state["transforms"])
            split = resume_state["split"]
            network_spec = resume_state["network"]
            known = {c.case_id for c in info.cases}
            missing = sorted((set(split["train"]) | set(split["val"])) - known)
            if missing:
                raise ValueError(f"--resume: cases {missing[:5]} of the stored split are not in {cfg.data}")
        else:
            spacing = cfg.spacing or info.median_spacing()
            if len(spacing) != spatial_dims:
                raise ValueError(f"spacing {spacing} has {len(spacing)} axes; the images have {spatial_dims}")
            roi = cfg.roi or auto_roi(info.median_shape(spacing), self._divisor(spatial_dims, None))
            if cfg.roi is None and cfg.network == "dynunet" and "strides" not in cfg.network_kwargs:
                roi = builders.dynunet_patch_size(roi, spacing)
            if len(roi) != spatial_dims:
                raise ValueError(f"roi {roi} has {len(roi)} axes; the images have {spatial_dims}")
            transforms = TransformConfig(spacing, intensity_mode(info.channel_names), roi, cfg.samples_per_case)
            if cfg.split is not None:
                split = cfg.split
            else:
                train_ids, val_ids = split_cases([c.case_id for c in info.cases], cfg.val_fraction, cfg.seed)
                split = {"train": train_ids, "val": val_ids}
            network_spec = None
        return info, transforms, split, network_spec

    def _divisor(self, spatial_dims, network) -> tuple[int, ...]:
        if network is not None:
            return builders.size_divisor(self.config.network, spatial_dims, network.medattn_config["network_kwargs"])
        if self.config.network == "dynunet" and "strides" not in self.config.network_kwargs:
            return (8,) * spatial_dims  # the layout is then derived from the ROI itself
        return builders.size_divisor(self.config.network, spatial_dims, self.config.network_kwargs)

    def _network_kwargs(self, spatial_dims, roi, spacing) -> dict:
        kwargs = dict(self.config.network_kwargs)
        if self.config.network == "dynunet" and "kernel_size" not in kwargs:
            kwargs.update(patch_size=list(roi), spacing=list(spacing))
        return kwargs

    def _build_network(self, info, transforms: TransformConfig, network_spec):
        cfg = self.config
        torch.manual_seed(cfg.seed)
        if network_spec is not None:
            return network_from_config(network_spec)
        network = builders.create(
            cfg.network,
            transforms.spatial_dims,
            len(info.channel_names),
            info.num_classes,
            attention=cfg.attention,
            **self._network_kwargs(transforms.spatial_dims, transforms.roi, transforms.spacing),
        )
        divisor = self._divisor(transforms.spatial_dims, network)
        bad = [f"{r} (multiple of {d} needed)" for r, d in zip(transforms.roi, divisor) if r % d]
        if bad:
            raise ValueError(f"roi {transforms.roi} does not fit {cfg.network}: {', '.join(bad)}")
        return network

    def _optimizer(self, network):
        cfg = self.config
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(network.parameters(), lr=cfg.lr, momentum=0.99, nesterov=True, weight_decay=cfg.weight_decay)
        return torch.optim.AdamW(network.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    # -- run -------------------------------------------------------------------------------

    def run(self) -> dict:
        """Train (or continue training) to ``config.epochs`` epochs.

        Returns:
            ``{"epochs", "best_epoch", "best_mean_dice", "out"}``.

        Raises:
            ValueError, FileNotFoundError: for bad data, a bad configuration, or a resume
                that does not match the stored run, with the file or value named.
        """
        from monai.losses import DiceCELoss

        cfg = self.config
        resume_state = self._load_resume_state()
        info, transforms, split, network_spec = self._prepare(resume_state)
        device = resolve_device(cfg.device)
        network = self._build_network(info, transforms, network_spec).to(device)
        optimizer = self._optimizer(network)
        progress = _Progress.restore(resume_state, network, optimizer)
        self.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.out / "config.json", {
            "train_config": cfg.to_dict(), "network": network.medattn_config, "transforms": transforms.to_dict(),
            "labels": {str(k): v for k, v in info.labels.items()}, "channel_names": info.channel_names, "split": split,
        })
        if progress.epoch >= cfg.epochs:
            self._log(f"{self.out / LAST} already has {progress.epoch} epochs (asked for {cfg.epochs}); nothing to do")
            return self._summary(progress.epoch, progress.best)

        train_ds, val_ds = self._datasets(info, transforms, split)
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        scaler = torch.amp.GradScaler(device.type) if cfg.amp and device.type == "cuda" else None
        self._log(
            f"{cfg.network} + {cfg.attention or 'no attention'}: {sum(p.numel() for p in network.parameters()):,} parameters, "
            f"{len(split['train'])} training / {len(split['val'])} validation cases, roi {transforms.roi}, "
            f"spacing {[round(s, 3) for s in transforms.spacing]}, intensity {transforms.intensity}, device {device}"
        )
        for epoch in range(progress.epoch, cfg.epochs):
            row = self._epoch(network, optimizer, loss_fn, scaler, device, epoch, train_ds, val_ds, transforms, info)
            progress.record(row)
            common = dict(labels=info.labels, channel_names=info.channel_names, epoch=epoch + 1,
                          history=progress.history, best=progress.best, split=split, train_config=cfg.to_dict())
            save_checkpoint(self.out / LAST, network, transforms, optimizer=optimizer.state_dict(), **common)
            if progress.best["epoch"] == epoch + 1:
                save_checkpoint(self.out / BEST, network, transforms, **common)
            self._write_csv(progress.history, info)
            self._log(
                f"epoch {epoch + 1}/{cfg.epochs}: loss {row['train_loss']:.4f}"
                + (f", val mean Dice {row['val_mean_dice']:.4f}" if "val_mean_dice" in row else "")
                + f" ({row['train_time_s']:.1f} s train, {row['val_time_s']:.1f} s val)"
            )
        return self._summary(cfg.epochs, progress.best)

    def _datasets(self, info, transforms: TransformConfig, split: dict):
        """Training and validation datasets; MONAI's CacheDataset loads and preprocesses
        every case once, with its own progress bar."""
        from monai.data import CacheDataset

        cfg = self.config
        by_id = {c.case_id: c.as_dict() for c in info.cases}
        return tuple(
            CacheDataset([by_id[i] for i in split[part]], transform, cache_rate=cfg.cache_rate,
                         num_workers=max(1, cfg.num_workers), progress=cfg.progress)
            for part, transform in (("train", train_transforms(transforms)), ("val", val_transforms(transforms)))
        )

    def _epoch(self, network, optimizer, loss_fn, scaler, device, epoch, train_ds, val_ds, transforms, info) -> dict:
        """One epoch at nnU-Net's poly learning rate, validated every ``val_every`` epochs
        and at the last; returns the epoch's row of the metrics CSV."""
        cfg = self.config
        lr = cfg.lr * (1 - epoch / cfg.epochs) ** 0.9
        for group in optimizer.param_groups:
            group["lr"] = lr
        started, cpu_started = time.perf_counter(), time.process_time()
        train_loss = self._train_epoch(network, train_ds, optimizer, loss_fn, scaler, device, epoch)
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss}
        train_time, train_cpu = time.perf_counter() - started, time.process_time() - cpu_started
        val_time = 0.0
        if (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs:
            started = time.perf_counter()
            per_class = self._validate(network, val_ds, transforms, info, device, epoch)
            val_time = time.perf_counter() - started
            row["val_mean_dice"] = float(np.nanmean(list(per_class.values()))) if per_class else float("nan")
            row.update({f"dice_{name}": value for name, value in per_class.items()})
        row.update(train_time_s=train_time, train_cpu_s=train_cpu, val_time_s=val_time)
        return row

    def _seed_epoch(self, epoch: int) -> torch.Generator:
        # Seeding from (seed, epoch) makes a resumed run draw the same crops, flips and
        # batch order as an uninterrupted one.
        seed = self.config.seed * 100_003 + epoch
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        return torch.Generator().manual_seed(seed)

    def _train_epoch(self, network, dataset, optimizer, loss_fn, scaler, device, epoch) -> float:
        from monai.data import DataLoader
        from tqdm.auto import tqdm

        cfg = self.config
        loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.num_workers,
                            generator=self._seed_epoch(epoch))
        network.train()
        losses = []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", disable=not cfg.progress, leave=False)
        for batch in bar:
            images, labels = batch["image"].to(device), batch["label"].to(device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, enabled=scaler is not None):
                loss = deep_supervision_loss(network(images), labels, loss_fn)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"epoch {epoch + 1}: training loss is {loss.item()}; lower --lr or check the data")
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
                optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        return float(np.mean(losses))

    @torch.no_grad()
    def _validate(self, network, dataset, transforms, info, device, epoch) -> dict[str, float]:
        from monai.data import DataLoader
        from monai.inferers import sliding_window_inference
        from monai.metrics import DiceMetric
        from tqdm.auto import tqdm

        cfg = self.config
        network.eval()
        n_classes = info.num_classes
        metric = DiceMetric(include_background=False, reduction="mean_batch", get_not_nans=False, num_classes=n_classes)
        loader = DataLoader(dataset, batch_size=1, num_workers=cfg.num_workers)
        for batch in tqdm(loader, desc="validation", unit="case", disable=not cfg.progress, leave=False):
            images, labels = batch["image"].to(device), batch["label"].to(device)
            with torch.autocast(device.type, enabled=cfg.amp and device.type == "cuda"):
                logits = sliding_window_inference(images, transforms.roi, cfg.sw_batch_size, network,
                                                  overlap=cfg.sw_overlap, mode="gaussian")
            prediction = logits.argmax(dim=1, keepdim=True)
            metric(y_pred=prediction, y=labels.long())
        values = metric.aggregate().cpu().numpy().tolist()
        metric.reset()
        return {_column(info.labels[label]): float(v) for label, v in zip(range(1, n_classes), values) if label in info.labels}

    # -- output ----------------------------------------------------------------------------

    def _write_csv(self, history: list[dict], info) -> None:
        columns = ["epoch", "lr", "train_loss", "val_mean_dice"]
        columns += [f"dice_{_column(info.labels[v])}" for v in sorted(info.labels) if v != 0]
        columns += ["train_time_s", "train_cpu_s", "val_time_s"]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in history:
            writer.writerow({k: _csv_value(row.get(k)) for k in columns})
        write_text_atomic(self.out / "metrics.csv", buffer.getvalue())

    def _summary(self, epochs, best) -> dict:
        return {"epochs": epochs, "best_epoch": best["epoch"], "best_mean_dice": best["mean_dice"], "out": str(self.out)}

    def _log(self, message: str) -> None:
        from tqdm.auto import tqdm

        tqdm.write(message, file=sys.stderr)


def _cases_of_split(info, split: dict, data) -> list:
    """The cases of ``info`` that ``split`` names; ValueError naming the unknown ids."""
    wanted = set(split["train"]) | set(split["val"])
    missing = sorted(wanted - {c.case_id for c in info.cases})
    if missing:
        raise ValueError(f"split: cases {missing[:5]} are not labelled cases of {data}")
    return [c for c in info.cases if c.case_id in wanted]


def deep_supervision_loss(output: torch.Tensor, labels: torch.Tensor, loss_fn) -> torch.Tensor:
    """``loss_fn`` on a plain output, or the weighted sum over DynUNet's stacked heads.

    DynUNet in training mode with deep supervision returns (B, 1 + deep_supr_num, C, *spatial),
    every head already interpolated to the label's size; head ``i`` gets weight ``2**-i``,
    the weights normalised to sum to 1.

    Args:
        output: (B, C, *spatial) logits, or (B, K, C, *spatial) stacked heads.
        labels: (B, 1, *spatial) label map.
    """
    if output.ndim == labels.ndim:
        return loss_fn(output, labels)
    heads = torch.unbind(output, dim=1)
    weights = [0.5**i for i in range(len(heads))]
    return sum(w * loss_fn(head, labels) for w, head in zip(weights, heads)) / sum(weights)


def _column(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in str(name)).strip("_").lower() or "label"


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value
