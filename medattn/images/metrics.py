"""Validation metrics of ``medattn train image``, computed once over the whole set.

- classification: ``accuracy`` and ``top5`` (top-k with k = min(5, classes), so that a
  3-class task reports top-3 under the same key, which is then 1.0);
- multilabel: ``auroc`` per class (scikit-learn's ``roc_auc_score``) and ``auroc_mean``
  over the classes that have it; a class whose validation targets are all 0 or all 1 has no
  AUROC and is reported as None ("n/a") instead of failing the run;
- segmentation: ``iou`` per class and ``miou`` from one confusion matrix summed over every
  validation pixel (255 ignored), torchvision's references' definition; a class absent from
  both prediction and ground truth has no IoU (None) and is left out of the mean.

Metrics are computed from gathered predictions (classification) or a summed confusion
matrix (segmentation), never averaged over batches or ranks.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from medattn.images.data import IGNORE_INDEX

__all__ = ["PRIMARY", "classification_metrics", "confusion_matrix", "multilabel_metrics", "segmentation_metrics"]

#: The metric that selects checkpoint_best.pt, per task.
PRIMARY = {"classification": "accuracy", "multilabel": "auroc_mean", "segmentation": "miou"}


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict:
    """``accuracy`` and ``top5`` of (N, C) logits against (N,) class indices."""
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hits = top == targets[:, None]
    return {"accuracy": float(hits[:, 0].double().mean()), "top5": float(hits.any(dim=1).double().mean())}


def multilabel_metrics(logits: torch.Tensor, targets: torch.Tensor, classes: list[str]) -> dict:
    """Per-class and mean AUROC of (N, C) logits against (N, C) 0/1 targets."""
    from sklearn.metrics import roc_auc_score

    scores, truth = logits.float().numpy(), targets.numpy()
    per_class = {}
    for index, name in enumerate(classes):
        column = truth[:, index]
        per_class[name] = None if column.min() == column.max() else float(roc_auc_score(column, scores[:, index]))
    defined = [v for v in per_class.values() if v is not None]
    return {"auroc_mean": float(np.mean(defined)) if defined else None, "auroc": per_class}


def confusion_matrix(prediction: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) counts, rows = ground truth, columns = prediction; 255 pixels are ignored."""
    valid = target != IGNORE_INDEX
    index = target[valid].long() * num_classes + prediction[valid].long()
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def segmentation_metrics(matrix: torch.Tensor, classes: list[str]) -> dict:
    """``iou`` per class and ``miou`` from a summed confusion matrix."""
    matrix = matrix.double()
    intersection = matrix.diag()
    union = matrix.sum(0) + matrix.sum(1) - intersection
    per_class = {name: (None if union[i] == 0 else float(intersection[i] / union[i])) for i, name in enumerate(classes)}
    defined = [v for v in per_class.values() if v is not None]
    total = float(matrix.sum())
    return {"miou": float(np.mean(defined)) if defined else None, "iou": per_class,
            "pixel_accuracy": float(intersection.sum() / total) if total else None}


def primary_value(metrics: dict, task: str) -> float:
    """The task's selection metric as a float (NaN when undefined)."""
    value = metrics.get(PRIMARY[task])
    return float("nan") if value is None else float(value)


def better(value: float, best: float) -> bool:
    return not math.isnan(value) and (math.isnan(best) or value > best)
