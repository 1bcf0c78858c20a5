"""The study's statistics against brute-force computations with numpy and scipy."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from medattn.pipelines import study_report

LABELS = {1: "anterior", 2: "posterior"}


def _table(rng, cases, shift=0.0):
    rows = []
    for case in cases:
        for label in LABELS:
            rows.append({"case": case, "label": label, "dice": float(np.clip(rng.uniform(0.5, 0.9) + shift, 0, 1)),
                         "hd95": float(rng.uniform(1, 5))})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def tables():
    rng = np.random.default_rng(3)
    cases = [f"case_{i:02d}" for i in range(12)]
    return {(variant, seed): _table(rng, cases, shift) for seed in (0, 1, 2)
            for variant, shift in (("stock", 0.0), ("dsm", 0.0), ("sna", -0.3))}


@pytest.fixture(scope="module")
def summary(tables):
    costs = {"stock": {"step_s": 2.0, "peak_bytes": 100}, "dsm": {"step_s": 3.0, "peak_bytes": 150},
             "sna": {"step_s": 2.2, "peak_bytes": 100}}
    return study_report.summarise(tables, LABELS, ["stock", "dsm", "sna"], costs)


def test_seed_statistics_are_mean_and_sample_std_of_the_run_means(tables, summary):
    for variant in ("stock", "dsm", "sna"):
        run_means = [tables[(variant, s)].groupby("label")["dice"].mean() for s in (0, 1, 2)]
        for label in LABELS:
            values = np.array([m[label] for m in run_means])
            entry = summary["classes"][variant]["dice"][str(label)]
            assert entry["mean"] == pytest.approx(values.mean(), abs=1e-12)
            assert entry["std"] == pytest.approx(values.std(ddof=1), abs=1e-12)
        over_classes = np.array([m.mean() for m in run_means])
        assert summary["classes"][variant]["dice"]["mean"]["mean"] == pytest.approx(over_classes.mean(), abs=1e-12)


def test_per_seed_test_is_scipy_wilcoxon_over_cases(tables, summary):
    a, b = tables[("dsm", 1)], tables[("stock", 1)]
    for label in LABELS:
        diff = (a[a.label == label]["dice"].to_numpy() - b[b.label == label]["dice"].to_numpy())
        row = next(r for r in summary["paired"]["dsm"]["per_seed"]["1"]
                   if r["metric"] == "dice" and r["label"] == str(label))
        assert row["p_value"] == pytest.approx(wilcoxon(diff).pvalue, rel=1e-12)
        assert row["mean_diff"] == pytest.approx(diff.mean(), abs=1e-12)
        assert (row["wins"], row["losses"]) == (int((diff > 0).sum()), int((diff < 0).sum()))


def test_pooled_test_averages_each_case_over_seeds_first(tables, summary):
    def case_means(variant):
        stacked = pd.concat([tables[(variant, s)] for s in (0, 1, 2)])
        return stacked.groupby("case")["dice"].mean().to_numpy()  # over seeds and classes

    diff = case_means("sna") - case_means("stock")
    row = next(r for r in summary["paired"]["sna"]["pooled"] if r["metric"] == "dice" and r["label"] == "all")
    assert row["n"] == 12  # cases, not seed x case pairs
    assert row["p_value"] == pytest.approx(wilcoxon(diff).pvalue, rel=1e-12)
    assert summary["verdicts"]["sna"]["verdict"] == "hurts"
    assert summary["verdicts"]["sna"]["p_value"] < 0.05


def test_verdict_is_no_difference_without_significance(summary):
    verdict = summary["verdicts"]["dsm"]
    assert verdict["p_value"] >= 0.05
    assert verdict["verdict"] == "no significant difference"


def test_cost_ratios_are_relative_to_stock(summary):
    assert summary["cost"]["dsm"]["step_s_ratio"] == pytest.approx(1.5)
    assert summary["cost"]["dsm"]["peak_bytes_ratio"] == pytest.approx(1.5)
    assert summary["cost"]["stock"]["step_s_ratio"] == 1.0


def test_a_case_undefined_in_one_seed_is_left_out_of_the_pooled_test(tables):
    broken = {k: v.copy() for k, v in tables.items()}
    broken[("dsm", 2)].loc[(broken[("dsm", 2)].case == "case_00") & (broken[("dsm", 2)].label == 1), "hd95"] = math.nan
    result = study_report.summarise(broken, LABELS, ["stock", "dsm"])
    row = next(r for r in result["paired"]["dsm"]["pooled"] if r["metric"] == "hd95" and r["label"] == "1")
    assert row["n"] == 11


def test_stock_must_come_first(tables):
    with pytest.raises(ValueError, match="first variant must be 'stock'"):
        study_report.summarise(tables, LABELS, ["dsm", "stock"])
