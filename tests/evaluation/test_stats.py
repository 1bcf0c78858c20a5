"""Aggregates and the paired comparison against hand counts and exact enumeration."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from medattn.evaluation.stats import describe, overall_means, paired_comparison, per_class_summary, wilcoxon_p_value


def exact_wilcoxon_two_sided(differences):
    """Enumerate all 2^n sign patterns of the ranks (no ties, no zeros)."""
    d = np.asarray(differences, dtype=float)
    ranks = np.argsort(np.argsort(np.abs(d))) + 1
    observed = ranks[d > 0].sum()
    totals = [sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product([0, 1], repeat=len(d))]
    totals = np.asarray(totals)
    lower, upper = (totals <= observed).mean(), (totals >= observed).mean()
    return min(1.0, 2 * min(lower, upper))


def test_wilcoxon_matches_exact_enumeration():
    differences = [1.5, -0.5, 2.0, 3.0, 0.25, 4.0, -1.0, 2.5, -3.5]
    assert wilcoxon_p_value(differences) == pytest.approx(exact_wilcoxon_two_sided(differences), rel=1e-9)


def test_wilcoxon_six_wins_out_of_six_is_one_in_thirty_two():
    assert wilcoxon_p_value([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]) == pytest.approx(2 / 2**6)


def test_wilcoxon_degenerate_inputs():
    assert wilcoxon_p_value([0.0, 0.0]) == 1.0
    assert math.isnan(wilcoxon_p_value([]))


def test_describe_excludes_nan_and_uses_the_sample_std():
    stats = describe([1.0, 2.0, math.nan, 4.0])
    assert stats["mean"] == pytest.approx(7 / 3)
    assert stats["std"] == pytest.approx(np.std([1.0, 2.0, 4.0], ddof=1))
    assert (stats["n"], stats["excluded"]) == (3, 1)
    single = describe([0.5])
    assert single["mean"] == 0.5 and math.isnan(single["std"])


def table(values: dict[tuple[str, int], tuple[float, float]]):
    return pd.DataFrame([{"case": c, "label": k, "dice": d, "hd95": h} for (c, k), (d, h) in values.items()])


def test_per_class_summary_and_mean_over_classes():
    metrics = table({("a", 1): (0.8, 2.0), ("b", 1): (0.6, 4.0), ("a", 2): (0.5, math.nan), ("b", 2): (0.7, 1.0)})
    per_class = per_class_summary(metrics, [1, 2], {1: "liver", 2: "aorta"}, columns=("dice", "hd95"))
    assert list(per_class["name"]) == ["liver", "aorta"]
    assert per_class["dice_mean"].tolist() == pytest.approx([0.7, 0.6])
    assert per_class["hd95_excluded"].tolist() == [0, 1]
    means = overall_means(per_class, columns=("dice", "hd95"))
    assert means["dice"] == pytest.approx(0.65)
    assert means["hd95"] == pytest.approx((3.0 + 1.0) / 2)


def test_paired_comparison_counts_and_directions():
    a = table({("c1", 1): (0.9, 1.0), ("c2", 1): (0.7, 5.0), ("c3", 1): (0.8, 2.0), ("c4", 1): (0.5, math.nan)})
    b = table({("c1", 1): (0.8, 2.0), ("c2", 1): (0.7, 3.0), ("c3", 1): (0.6, 2.0), ("c4", 1): (0.6, 1.0)})
    result = paired_comparison(a, b, [1], {1: "liver"}, metrics=("dice", "hd95"))
    dice = result[(result["metric"] == "dice") & (result["label"] == 1)].iloc[0]
    assert (dice["wins"], dice["ties"], dice["losses"]) == (2, 1, 1)
    assert dice["mean_diff"] == pytest.approx((0.1 + 0 + 0.2 - 0.1) / 4)
    hd95 = result[(result["metric"] == "hd95") & (result["label"] == 1)].iloc[0]
    # Lower distance wins; c4 is left out because A's HD95 is undefined there.
    assert (hd95["n"], hd95["wins"], hd95["ties"], hd95["losses"]) == (3, 1, 1, 1)
    assert hd95["p_value"] == pytest.approx(exact_wilcoxon_two_sided([-1.0, 2.0]))
    assert set(result["label"]) == {1, "all"}


def test_paired_comparison_refuses_different_cases():
    a = table({("c1", 1): (0.9, 1.0)})
    b = table({("c2", 1): (0.9, 1.0)})
    with pytest.raises(ValueError, match="differ in"):
        paired_comparison(a, b, [1], {1: "liver"}, metrics=("dice",))
    with pytest.raises(ValueError, match="cannot compare metric 'rvd'"):
        paired_comparison(a, a, [1], {1: "liver"}, metrics=("rvd",))
