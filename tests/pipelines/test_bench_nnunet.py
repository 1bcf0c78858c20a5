"""Pure parts of ``medattn bench nnunet``: split, timings, paired statistics, tables, budget.

The training itself is the benchmark (minutes on CPU), not a test.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from medattn.nnunet.trainer import BENCH_SCHEDULE_ENV, bench_schedule_from_env
from medattn.pipelines import bench_nnunet as bench
from tests.cli_help import help_text

CASES = [f"hippocampus_{i:03d}" for i in range(1, 61)]


def test_split_is_seeded_disjoint_and_order_free():
    split = bench.choose_split(CASES, val_cases=12, seed=3)
    assert len(split["val"]) == 12 and len(split["train"]) == len(CASES) - 12
    assert set(split["val"]).isdisjoint(split["train"])
    assert set(split["val"]) | set(split["train"]) == set(CASES)
    assert split == bench.choose_split(list(reversed(CASES)), val_cases=12, seed=3)
    assert split["val"] != bench.choose_split(CASES, val_cases=12, seed=4)["val"]


def test_split_keeps_validation_when_training_subset_shrinks():
    full = bench.choose_split(CASES, val_cases=10, seed=0)
    small = bench.choose_split(CASES, val_cases=10, train_cases=7, seed=0)
    assert small["val"] == full["val"]
    assert len(small["train"]) == 7 and set(small["train"]) <= set(full["train"])


@pytest.mark.parametrize(
    "cases, val, train, match",
    [
        (CASES, 0, 0, "val_cases"),
        (CASES, 60, 0, "cannot split"),
        (CASES, 10, 51, "cannot split"),
        (CASES, 10, -1, "train_cases"),
        (CASES + CASES[:1], 10, 0, "duplicate"),
    ],
)
def test_split_rejects_impossible_counts(cases, val, train, match):
    with pytest.raises(ValueError, match=match):
        bench.choose_split(cases, val_cases=val, train_cases=train)


def test_timing_summary_skips_warm_up():
    seconds = [9.0, 1.0, 3.0, 2.0, 4.0]
    summary = bench.timing_summary(seconds, skip=1)
    assert summary == {"median": float(np.median(seconds[1:])), "mean": float(np.mean(seconds[1:])), "n": 4}
    with pytest.raises(ValueError, match="no timings left"):
        bench.timing_summary([1.0], skip=1)


def _long_table(dice: np.ndarray, hd95: np.ndarray) -> pd.DataFrame:
    rows = [
        {"case": f"case_{c}", "label": label, "name": bench.CLASS_NAMES[label],
         "dice": dice[c, j], "hd95": hd95[c, j], "assd": math.nan}
        for c in range(dice.shape[0])
        for j, label in enumerate(bench.CLASS_NAMES)
    ]
    return pd.DataFrame(rows)


def test_paired_comparison_matches_scipy_and_brute_force():
    rng = np.random.default_rng(7)
    stock_dice = rng.uniform(0.6, 0.9, size=(25, 2))
    dice = stock_dice + rng.normal(0.01, 0.03, size=(25, 2))
    dice[:3] = stock_dice[:3]  # ties
    stock_hd = rng.uniform(1.0, 6.0, size=(25, 2))
    hd = stock_hd + rng.normal(-0.2, 0.5, size=(25, 2))

    table = bench.compare_to_reference(_long_table(dice, hd), _long_table(stock_dice, stock_hd))

    for j, label in enumerate(bench.CLASS_NAMES):
        for metric, a, b, higher_better in (("dice", dice, stock_dice, True), ("hd95", hd, stock_hd, False)):
            row = table[(table["label"] == label) & (table["metric"] == metric)].iloc[0]
            diff = a[:, j] - b[:, j]
            assert row["mean_diff"] == pytest.approx(diff.mean())
            assert row["p_value"] == pytest.approx(wilcoxon(diff, zero_method="wilcox").pvalue)
            better = diff > 0 if higher_better else diff < 0
            worse = diff < 0 if higher_better else diff > 0
            assert (row["wins"], row["ties"], row["losses"]) == (better.sum(), (diff == 0).sum(), worse.sum())


def _record(params, step, infer, dice, paired=None):
    summary = {
        "dice": {k: {"mean": dice, "std": 0.01, "n": 20} for k in bench.CLASS_NAMES},
        "hd95": {k: {"mean": 3.0, "std": math.nan, "n": 1} for k in bench.CLASS_NAMES},
    }
    return {"params": params, "step": {"median": step}, "infer": {"median": infer}, "summary": summary,
            "paired": paired}


def test_format_tables_ratios_and_paired_rows():
    paired = {m: {k: {"mean_diff": 0.0123, "p_value": 0.04, "wins": 12, "ties": 1, "losses": 7}
                  for k in bench.CLASS_NAMES} for m in ("dice", "hd95")}
    results = {"Stock": _record(1000, 2.0, 0.5, 0.8), "DSM": _record(1100, 3.0, 0.6, 0.81, paired)}
    text = bench.format_tables(results)
    dsm_row = next(line for line in text.splitlines() if line.startswith("| DSM | 0.810"))
    cells = [c.strip() for c in dsm_row.strip("|").split("|")]
    assert cells[1:3] == ["0.810 ± 0.010"] * 2
    assert cells[3] == "3.00 ± n/a"  # one value: no standard deviation
    assert cells[5:] == ["1,100", "+10.00 %", "3.000", "1.50x", "0.600", "1.20x"]
    assert "| DSM | posterior | +0.0123 | 0.040 | 12/1/7 |" in text
    assert not any(line.startswith("| Stock | anterior") for line in text.splitlines())


def test_format_tables_needs_the_reference():
    with pytest.raises(ValueError, match="Stock"):
        bench.format_tables({"DSM": _record(1, 1.0, 1.0, 0.5)})


def test_bench_schedule_budget_from_environment():
    assert bench_schedule_from_env({}) == BENCH_SCHEDULE_ENV
    assert bench_schedule_from_env({"MEDATTN_BENCH_EPOCHS": "3"})["MEDATTN_BENCH_EPOCHS"] == 3
    for bad in ("0", "two", "-1"):
        with pytest.raises(ValueError, match=f"MEDATTN_BENCH_ITERATIONS.*'{bad}'"):
            bench_schedule_from_env({"MEDATTN_BENCH_ITERATIONS": bad})


def test_bench_trainers_use_the_bench_schedule():
    import importlib.util

    from medattn.nnunet import trainer_folder
    from medattn.nnunet.trainer import BenchSchedule

    spec = importlib.util.spec_from_file_location("medattn_trainers_test", trainer_folder() / "medattn_trainers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in bench.DEFAULT_TRAINERS:
        cls = getattr(module, f"nnUNetTrainer{name}_bench")
        assert cls.__mro__[1] is BenchSchedule
    assert module.nnUNetTrainerDSM_bench.attention == module.nnUNetTrainerDSM.attention
    assert module.nnUNetTrainerStock_bench.attention is None


def test_non_msd_folder_is_named_in_the_error(tmp_path):
    with pytest.raises(ValueError, match=str(tmp_path)):
        bench._prepare_dataset(tmp_path, tmp_path / "work", {}, timeout=1)


def test_help_has_description_and_example(capsys):
    out = help_text(capsys, "bench", "nnunet")
    assert "Task04_Hippocampus" in out and "Example:" in out and "--val-cases" in out


def test_step_goal_table_judges_each_trainer_against_stock():
    costs = {"Stock": {"step_s": 2.0, "peak_bytes": 100 * 2**20, "parameters": 1000},
             "DSM": {"step_s": 2.3, "peak_bytes": 110 * 2**20, "parameters": 1100},
             "SNA": {"step_s": 2.1, "peak_bytes": 120 * 2**20, "parameters": 1000}}
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in bench.step_goal_table(costs).splitlines()[2:]]
    rows = {row[0]: row for row in cells}
    assert rows["Stock"][3:5] == ["1.000", "pass"] and rows["Stock"][6:8] == ["1.000", "pass"]
    assert rows["DSM"][3:5] == ["1.150", "fail"] and rows["DSM"][6:8] == ["1.100", "pass"]
    assert rows["SNA"][3:5] == ["1.050", "pass"] and rows["SNA"][6:8] == ["1.200", "fail"]
    assert rows["DSM"][1] == "1,100" and rows["DSM"][5] == "110"


def test_steps_only_names_an_unknown_trainer_before_planning(tmp_path, capsys):
    from medattn.cli import main

    code = main(["bench", "nnunet", "--steps-only", "--trainers", "DSMX", "--work-dir", str(tmp_path / "w"),
                 "--data", str(tmp_path)])
    assert code == 2
    assert "nnUNetTrainerDSMX" in capsys.readouterr().err
    assert not (tmp_path / "w" / "raw").exists()
