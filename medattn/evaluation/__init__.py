"""Dice / HD95 evaluation with reports (``medattn evaluate``).

Modules: :mod:`~medattn.evaluation.metrics` (Dice, HD95, ASSD, volumes; bit-identical to
medpy on a bounding-box crop), :mod:`~medattn.evaluation.conventions` (empty masks),
:mod:`~medattn.evaluation.labels` (label maps), :mod:`~medattn.evaluation.stats`
(aggregates, paired Wilcoxon comparison), :mod:`~medattn.evaluation.report` (output
files) and :mod:`~medattn.evaluation.api` (:func:`evaluate_folders`).

The names below are loaded on first use, so importing this package (as ``medattn
--help`` does through the CLI module) stays cheap.
"""

from __future__ import annotations

from medattn._lazy import lazy_exports

_EXPORTS = {
    "evaluate_folders": "medattn.evaluation.api",
    "EvaluationResult": "medattn.evaluation.api",
    "EvaluationError": "medattn.evaluation.api",
    "MissingPredictionsError": "medattn.evaluation.api",
    "LabelValueError": "medattn.evaluation.api",
    "read_label_image": "medattn.evaluation.api",
    "binary_metrics": "medattn.evaluation.metrics",
    "label_metrics": "medattn.evaluation.metrics",
    "surface_distances": "medattn.evaluation.metrics",
    "LabelMap": "medattn.evaluation.labels",
    "Region": "medattn.evaluation.labels",
    "label_column_value": "medattn.evaluation.labels",
    "LabelMapError": "medattn.evaluation.labels",
    "parse_label_map": "medattn.evaluation.labels",
    "CONVENTIONS": "medattn.evaluation.conventions",
    "paired_comparison": "medattn.evaluation.stats",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
