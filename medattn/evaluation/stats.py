"""Aggregates of the per-case metrics and the paired comparison of two prediction sets.

* Per class: mean, sample standard deviation (``ddof=1``; NaN below two values) and the
  number of values that entered them. NaN values (an undefined metric under the
  ``nnunet`` convention) are left out and counted as excluded.
* Overall: the mean over classes of the per-class means, i.e. the "mDice" and "mHD95" of
  the Synapse tables (TransUNet, Swin-Unet, DSNet).
* Paired comparison (A against B on the same ground truth): per class, the mean
  difference A − B over the cases where both are defined, the two-sided Wilcoxon
  signed-rank p-value (``scipy.stats.wilcoxon``, zero differences dropped), and A's
  wins, ties and losses (higher Dice wins, lower distance wins). The ``all`` row compares
  the per-case means over classes.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np

#: Metrics aggregated per class, in report order.
SUMMARY_METRICS = ("dice", "hd95", "assd", "vol_diff", "rvd")

#: Metrics of the paired comparison and whether a higher value is better.
HIGHER_IS_BETTER = {"dice": True, "hd95": False, "assd": False}


def describe(values: Sequence[float]) -> dict[str, float | int]:
    """Mean, sample std and count of the non-NaN ``values``.

    Returns:
        ``{"mean", "std", "n", "excluded"}``; mean is NaN without values, std is NaN
        with fewer than two.
    """
    values = np.asarray(values, dtype=float)
    finite = values[~np.isnan(values)]
    n = int(finite.size)
    return {
        "mean": float(finite.mean()) if n else math.nan,
        "std": float(finite.std(ddof=1)) if n > 1 else math.nan,
        "n": n,
        "excluded": int(values.size - n),
    }


def _label_value(label):
    """A label value as plain Python for JSON: an int, or a region's key such as ``"1+2+3"``."""
    return int(label) if isinstance(label, (int, np.integer)) else str(label)


def per_class_summary(metrics, labels: Sequence[int | str], names: dict[int | str, str], columns=SUMMARY_METRICS):
    """One row per label: ``label, name`` then ``<metric>_mean/_std/_n/_excluded``.

    Args:
        metrics: long table with columns ``label`` and the metric columns.
        labels: label values in report order.
        names: label value to name.
        columns: metrics to aggregate.

    Returns:
        A ``pandas.DataFrame``.
    """
    import pandas as pd

    rows = []
    for label in labels:
        subset = metrics[metrics["label"] == label]
        row = {"label": _label_value(label), "name": names[label]}
        for column in columns:
            stats = describe(subset[column].to_numpy())
            row.update({f"{column}_{key}": value for key, value in stats.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def overall_means(per_class, columns=SUMMARY_METRICS) -> dict[str, float]:
    """Mean over classes of the per-class means (classes with no defined value are skipped)."""
    result = {}
    for column in columns:
        means = per_class[f"{column}_mean"].to_numpy(dtype=float)
        means = means[~np.isnan(means)]
        result[column] = float(means.mean()) if means.size else math.nan
    return result


def wilcoxon_p_value(differences: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences.

    Zero differences are dropped (Wilcoxon's original treatment). Returns 1.0 when every
    difference is zero and NaN when there is no pair.
    """
    from scipy.stats import wilcoxon

    d = np.asarray(differences, dtype=float)
    if d.size == 0:
        return math.nan
    if not np.any(d != 0):
        return 1.0
    with warnings.catch_warnings():
        # scipy warns that small samples or zeros make the normal approximation coarse;
        # the p-value is still the one it defines.
        warnings.simplefilter("ignore")
        return float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def paired_comparison(
    a, b, labels: Sequence[int | str], names: dict[int | str, str], metrics: Sequence[str] = tuple(HIGHER_IS_BETTER)
):
    """Compare two long metric tables case by case.

    Args:
        a: metrics of prediction set A (columns ``case, label`` and the metrics).
        b: metrics of prediction set B on the same cases and labels.
        labels: label values in report order.
        names: label value to name.
        metrics: metrics to compare; each must be a key of :data:`HIGHER_IS_BETTER`.

    Returns:
        A ``pandas.DataFrame`` with one row per label and metric, then one ``all`` row per
        metric: ``label, name, metric, n, mean_a, mean_b, mean_diff, p_value, wins, ties,
        losses`` (wins are A's).

    Raises:
        ValueError: for a metric without a known direction, or if the tables do not hold
            the same cases.
    """
    import pandas as pd

    for metric in metrics:
        if metric not in HIGHER_IS_BETTER:
            raise ValueError(f"cannot compare metric {metric!r}; choose from {list(HIGHER_IS_BETTER)}")
    keys_a = set(zip(a["case"], a["label"]))
    keys_b = set(zip(b["case"], b["label"]))
    if keys_a != keys_b:
        raise ValueError(f"the two tables differ in (case, label) pairs: {sorted(keys_a ^ keys_b)[:10]}")
    merged = a.merge(b, on=["case", "label"], suffixes=("_a", "_b"))
    rows = []
    for metric in metrics:
        for label in labels:
            subset = merged[merged["label"] == label]
            rows.append(
                {"label": _label_value(label), "name": names[label], "metric": metric,
                 **_paired_stats(subset[f"{metric}_a"], subset[f"{metric}_b"], HIGHER_IS_BETTER[metric])}
            )
        # Per-case mean over classes, as in the "mDice" column of the papers' tables.
        case_means = merged.groupby("case")[[f"{metric}_a", f"{metric}_b"]].mean()
        rows.append(
            {"label": "all", "name": "mean over classes", "metric": metric,
             **_paired_stats(case_means[f"{metric}_a"], case_means[f"{metric}_b"], HIGHER_IS_BETTER[metric])}
        )
    return pd.DataFrame(rows)


def _paired_stats(values_a, values_b, higher_is_better: bool) -> dict:
    va = np.asarray(values_a, dtype=float)
    vb = np.asarray(values_b, dtype=float)
    both = ~(np.isnan(va) | np.isnan(vb))
    va, vb = va[both], vb[both]
    diff = va - vb
    better = diff > 0 if higher_is_better else diff < 0
    worse = diff < 0 if higher_is_better else diff > 0
    return {
        "n": int(diff.size),
        "mean_a": float(va.mean()) if diff.size else math.nan,
        "mean_b": float(vb.mean()) if diff.size else math.nan,
        "mean_diff": float(diff.mean()) if diff.size else math.nan,
        "p_value": wilcoxon_p_value(diff),
        "wins": int(better.sum()),
        "ties": int((diff == 0).sum()),
        "losses": int(worse.sum()),
    }
