"""Predict a test set with a ``medattn train image`` checkpoint (``medattn predict`` routes
such models here).

Writes into ``output``:

- classification and multi-label: ``predictions.csv``, one row per image: its path (as
  given, relative to the test set's root), the predicted class (classification), and one
  probability column per class (softmax, or sigmoid for multi-label);
- segmentation: one label PNG per image, ``<stem>.png``, with the input's size (palette
  PNG of class indices, VOC's colours);
- ``metrics.json`` when the test set carries labels: the validation metrics of the task
  (accuracy/top5, auroc_mean/auroc, miou/iou), computed as in training.

Every file is written atomically; existing outputs are replaced.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import torch

from medattn.data.io import atomic_write, check_output_folder, write_json_atomic, write_text_atomic
from medattn.images.data import ImageDataset, build_transforms, collate_with_full_masks, discover_test

__all__ = ["find_image_checkpoint", "predict_images"]

DEFAULT_CHECKPOINT = "checkpoint_best.pt"


def find_image_checkpoint(model: str | os.PathLike, checkpoint: str | None = None) -> Path | None:
    """The image checkpoint ``model`` names (a file, or a run folder), or None when it is
    not one (then it is an nnU-Net or MONAI model)."""
    from medattn.images.training import CHECKPOINT_FORMAT, is_image_checkpoint

    path = Path(model)
    if path.is_dir():
        return path / (checkpoint or DEFAULT_CHECKPOINT) if is_image_checkpoint(path) else None
    if not path.is_file() or path.suffix not in (".pt", ".pth"):
        return None
    if is_image_checkpoint(path):
        return path
    try:  # a checkpoint copied away from its run folder: look inside (weights_only)
        found = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not ours to judge: the other backends report their own errors
        return None
    return path if isinstance(found, dict) and found.get("format") == CHECKPOINT_FORMAT else None


def _palette() -> list[int]:
    """VOC's colour map (bit-interleaved class index), 256 entries."""
    colours = []
    for index in range(256):
        r = g = b = 0
        value = index
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        colours += [r, g, b]
    return colours


def _write_label_png(labels: np.ndarray, path: Path) -> None:
    from PIL import Image

    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(_palette())
    with atomic_write(path, suffix=".png") as tmp:
        image.save(tmp)


@torch.no_grad()
def predict_images(checkpoint: str | os.PathLike, test: str | os.PathLike, output: str | os.PathLike,
                   device: str = "auto", batch_size: int = 16, use_ema: bool = True, progress: bool = True) -> dict:
    """Predict ``test`` with ``checkpoint``; returns ``{"predictions", "metrics", "model"}``.

    Raises:
        ValueError, FileNotFoundError: for an unreadable checkpoint or test set, naming it.
    """
    from tqdm.auto import tqdm

    from medattn.devices import resolve_device
    from medattn.images import metrics as image_metrics
    from medattn.images.training import load_image_checkpoint, upsampled_prediction

    model, info = load_image_checkpoint(checkpoint, use_ema=use_ema)
    task, classes = info["model_config"]["task"], info["classes"]
    samples, labelled, root = discover_test(task, test, classes)
    output = check_output_folder(output, "--output")
    device = resolve_device(device)
    model.to(device)
    norm = info["normalisation"]
    transform = build_transforms(task, False, info["settings"]["image_size"], norm["mean"], norm["std"])
    dataset = ImageDataset(samples, task, transform, info["channels"], keep_full_mask=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size,
                                         collate_fn=collate_with_full_masks if task == "segmentation" else None)
    output.mkdir(parents=True, exist_ok=True)
    rows, logits_all, targets_all = [], [], []
    matrix = torch.zeros(len(classes), len(classes), dtype=torch.int64)
    position = 0
    for batch in tqdm(loader, desc="predict", unit="batch", disable=not progress):
        out = model(batch[0].to(device))
        batch_samples = samples[position:position + len(batch[0])]
        position += len(batch[0])
        if task == "segmentation":
            for logits, mask, sample in zip(out["out"].float(), batch[2], batch_samples):
                prediction = upsampled_prediction(logits, mask.shape).cpu()
                _write_label_png(prediction.numpy(), output / f"{sample.image.stem}.png")
                if labelled:
                    matrix += image_metrics.confusion_matrix(prediction, mask, len(classes))
            continue
        logits_all.append(out.float().cpu())
        targets_all.append(batch[1])
    result = {"model": str(checkpoint), "weights": info["weights"], "samples": len(samples), "metrics": None}
    if task == "segmentation":
        result["predictions"] = str(output)
        if labelled:
            result["metrics"] = image_metrics.segmentation_metrics(matrix, classes)
    else:
        logits = torch.cat(logits_all)
        probabilities = logits.sigmoid() if task == "multilabel" else logits.softmax(1)
        for sample, probs in zip(samples, probabilities.tolist()):
            row = {"path": _relative(sample.image, root)}
            if task == "classification":
                row["prediction"] = classes[int(np.argmax(probs))]
            row.update({f"prob_{name}": f"{p:.6f}" for name, p in zip(classes, probs)})
            rows.append(row)
        _write_csv(rows, output / "predictions.csv")
        result["predictions"] = str(output / "predictions.csv")
        if labelled:
            targets = torch.cat(targets_all)
            result["metrics"] = (image_metrics.multilabel_metrics(logits, targets, classes) if task == "multilabel"
                                 else image_metrics.classification_metrics(logits, targets.long()))
    if result["metrics"] is not None:
        write_json_atomic(output / "metrics.json", dict(result["metrics"], task=task, samples=len(samples),
                                                        model=str(checkpoint), weights=info["weights"]))
    return result


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _write_csv(rows: list[dict], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())
